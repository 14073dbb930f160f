"""Job kind "restore": measure test images, solve the inverse problem, score the restorations.

Grid axes: ``methods`` (solver name + parameters; ``preset = "tuned32"`` fills in the values
tuned for the task's operator, :mod:`diffinv.solvers.presets`, and the values it sets for
that operator are part of the row identity; ``true_operator = true`` makes the method a labelled
reference that is given a blind family's hidden parameters, see :func:`solver_params`),
``tasks`` (an operator and a noise model) and ``priors`` (embedded name, or a table with
``name`` and ``path``). ``[run] dataset = "fashion32:test"`` names the images; image ``i`` of a
cell is image ``i`` of that split, i = 0 .. n_images - 1.

For a batch of image indices I of a cell (method M, task T, prior P):

1. x = images I (with their labels), on ``[run] device``;
2. ``m = diffinv.physics.measure(x, make_operator(T.operator, **T.params), T.noise, seed, I)``:
   the operator's per-image parameters and the noise of image i come from the per-image stream
   of (run seed, i), so every method of a run sees the same y for image i, a batch gives the
   same y as its images one by one, and ``diffinv measure --dataset DATASET:SPLIT:i --seed SEED``
   reproduces it;
3. ``x_hat = M(m.y, m.public(), prior, seed=[h_i])``: the solver receives the measurement
   without its hidden truth (operator name, settings, public per-image parameters, noise spec;
   no x, no blind parameters) and one generator per image from a second stream, seeded by
   ``image_seed(derived_seed(seed, "solver"), i)``, independent of the noise;
4. every metric m of ``metrics``: ``get_metric(m)(x_hat, x)`` -> one value per image (a metric
   that takes ``labels``, such as digit-acc, gets the images' labels).

Two kinds of metric names read the solver's trace instead of scoring ``x_hat``:

* ``"trace:KEY"``: ``result.trace[KEY]``, one value per image (a (B,) tensor or list, or a number
  shared by the batch), e.g. ``"trace:iterations_run"`` or ``"trace:picked_iteration"`` of an
  early-stopped DMPlug run; ``"trace:KEY@I"`` reads row ``I`` (0-based iteration) of a
  per-iteration (iterations, B) log, e.g. ``"trace:psnr@999"``, the PSNR of DMPlug's iterate 999
  (NaN where the image's run had ended before it);
* ``"oracle"``: ``result.trace["oracle_psnr"]``, the best PSNR over an iterative solver's iterates
  (the figure the official DMPlug code reports), *never the method's result*. Only for this
  column, a solver whose call takes a ``truth`` keyword (DMPlug) receives ``truth=x``, which it
  uses for evaluation only (its output does not depend on it; ``tests/test_bench_oracle.py``
  checks this). No other solver ever sees ``x``;
* ``"kernel-mse"``: the MSE between the solver's estimated kernel ``trace["kernel"]`` and the
  true kernel of a blind blur family, after centring both (:mod:`diffinv.metrics.kernels`);
* ``"residual"``: the measurement residual ``||y - A(x_hat)||_2 / sqrt(m)`` of each image (``m``
  the entries of its ``y``; ``A`` the true operator, with a blind family's hidden parameters):
  a method that fits the data to the noise level scores ~ sigma (hard data consistency, as
  ReSample's, should), a larger value is unexplained data, a much smaller one fitted noise;
* ``"oracle_gap"``: oracle - psnr of the output, image by image (what choosing the iterate with
  the truth would add to the method's result; its mean and interval are those of the paired
  difference, tighter than the two columns' own intervals suggest). Needs the truth as "oracle".

A solver whose trace lacks the key (DPS has no iterates to pick from) gets NaN for that column.

NFE is the solver's count for the batch (a batched network call counts once, which is also the
per-image count when every image goes through every call; an early-stopped DMPlug batch runs until
its last image stops, so its NFE is that image's, and each image's own iteration count is
``"trace:iterations_run"``); seconds/image is the solver's wall time over the batch size. With a CUDA
device the batch's peak memory is stored in each row's ``extra``.

The data, physics, solver, metric and prior modules are imported when the job runs, so the runner
and its tests do not depend on them. (Interface note: the solver contract ``solver(y, physics,
prior, seed=...) -> Result(x, nfe, seconds, trace)`` is the one of DESIGN.md; ``physics`` is the
public :class:`~diffinv.physics.Measurement`.) How a task, prior, method and data set are read,
and the seeds and the rehearsal, are shared with the other kinds: :mod:`diffinv.bench.kinds.common`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import REQUIRED, RunContext, UnitResult, register_job_kind
from diffinv.bench.kinds.common import (
    AXIS_HELP,
    DATASET_HELP,
    PRESET,
    TRUE_OPERATOR,
    cached_prior,
    call_until_first_module,
    dataset_images,
    dataset_split,
    derived_seed,
    parse_dataset,
    rehearsal_cells,
    resolve_identity,
    solver_factory,
    solver_params,
    task_parts,
    validate_entries,
)
from diffinv.bench.spec import Cell
from diffinv.errors import DiffinvError


def validate(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Resolve every name (data set, split, solver, operator, noise, metric) before any work."""
    from diffinv.data import SPLITS, canonical_name
    from diffinv.errors import UnknownNameError
    from diffinv.metrics import get_metric

    name, split = parse_dataset(str(ctx.options["dataset"]))
    canonical_name(name)
    if split not in SPLITS:
        raise UnknownNameError("split", split, list(SPLITS))
    for m in ctx.metrics:
        if trace_key(m) is None and m not in (ORACLE_GAP, KERNEL_MSE, RESIDUAL):
            get_metric(m)
    validate_entries(cells)
    n = len(dataset_split(ctx))
    most = max(c.target for c in cells)
    if most > n:
        raise BenchConfigError(f"n_images {most} exceeds the {n} images of {name}:{split}")


def _score(metric: Any, x_hat: Any, x: Any, labels: Any) -> list[float]:
    fn = getattr(metric, "fn", metric)
    try:
        takes_labels = "labels" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_labels = False
    values = metric(x_hat, x, labels=labels) if takes_labels else metric(x_hat, x)
    return [float(v) for v in values.detach().reshape(-1).cpu()]


ORACLE = "oracle"
ORACLE_GAP = "oracle_gap"
KERNEL_MSE = "kernel-mse"
RESIDUAL = "residual"
TRACE_PREFIX = "trace:"


def trace_key(metric: str) -> str | None:
    """The trace key a metric name reads (``"oracle"`` -> ``"oracle_psnr"``), else None."""
    if metric == ORACLE:
        return "oracle_psnr"
    if metric.startswith(TRACE_PREFIX):
        key = metric[len(TRACE_PREFIX):]
        if not key:
            raise BenchConfigError(f"metric {metric!r}: name a trace key, e.g. "
                                   "trace:iterations_run")
        return key
    return None


def _from_trace(trace: dict[str, Any], key: str, n: int) -> list[float]:
    """Per-image values of ``trace[key]`` (NaN if absent)."""
    import torch

    name, at, row = key.partition("@")
    if name not in trace:
        return [float("nan")] * n
    v = trace[name]
    t = torch.as_tensor(v.detach().cpu() if isinstance(v, torch.Tensor) else v,
                        dtype=torch.float64)
    if at:
        if not row.isdigit():
            raise BenchConfigError(f"trace:{key}: the row after '@' must be an iteration number")
        if t.ndim != 2 or t.shape[1] != n:
            raise DiffinvError(f"trace[{name!r}] is not a per-iteration log of a batch of {n} "
                               f"(shape {tuple(t.shape)}): '@{row}' needs one")
        return [float(a) for a in t[int(row)]] if int(row) < len(t) else [float("nan")] * n
    t = t.reshape(-1)
    if t.numel() == 1:
        return [float(t)] * n
    if t.numel() != n:
        raise DiffinvError(f"trace[{key!r}] holds {t.numel()} values for a batch of {n}")
    return [float(a) for a in t]


def _evaluation_kwargs(solver: Any, metrics: Sequence[str], x: Any) -> dict[str, Any]:
    """``{"truth": x}`` when a column needs the truth (the oracle, or a trace key about PSNR such
    as ``trace:wmv_50_100_psnr``) and the solver's call takes a truth for evaluation (DMPlug);
    otherwise nothing."""
    keys = [ORACLE if m == ORACLE_GAP else trace_key(m) for m in metrics]
    if not any(k and ("psnr" in k or "oracle" in k) for k in keys):
        return {}
    try:
        takes = "truth" in inspect.signature(solver.__call__).parameters
    except (TypeError, ValueError):
        takes = False
    return {"truth": x} if takes else {}


@dataclass
class Restored:
    """One batch of a cell: the truth, its labels, the measurement and the solver's result."""

    x: Any
    labels: Any
    measurement: Any
    result: Any
    extra: dict[str, Any]


@dataclass
class _Setup:
    """What a batch of a cell hands its solver: everything up to the solver call."""

    x: Any
    labels: Any
    measurement: Any
    public: Any
    solver: Any
    prior: Any
    generators: Any
    solver_seed: int


def _setup(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> _Setup:
    """Steps 1-2 of the module docstring, and the solver, its per-image generators and the public
    measurement it receives, for images ``indices`` of ``cell``."""
    from diffinv.physics import make_operator, measure
    from diffinv.seeding import image_generators

    method, task = cell["method"], cell["task"]
    prior = cached_prior(ctx, cell["prior"])
    x, labels = dataset_images(ctx, indices)
    op_name, op_params, noise_spec = task_parts(task)
    op = make_operator(op_name, **op_params).to(ctx.device)
    params, known = solver_params(method)
    solver = solver_factory()(method.name, operator=op_name, **params)

    m = measure(x, op, noise_spec, ctx.seed, list(indices),
                domain=str(getattr(prior, "domain", "image")), source=ctx.options["dataset"])
    solver_seed = derived_seed(ctx.seed, "solver")
    gens = image_generators(solver_seed, list(indices))
    public = m.public()
    if known:  # a labelled reference: the blind family's hidden parameters made public
        from dataclasses import replace

        public = replace(public, blind=False, params={**public.params, **m.true_params})
    return _Setup(x, labels, m, public, solver, prior, gens, solver_seed)


def restore_batch(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> Restored:
    """Steps 1-3 of the module docstring for images ``indices`` of ``cell``."""
    import torch

    s = _setup(ctx, cell, indices)
    cuda = torch.device(ctx.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    result = s.solver(s.measurement.y, s.public, s.prior, seed=s.generators,
                      **_evaluation_kwargs(s.solver, ctx.metrics, s.x))
    extra: dict[str, Any] = {"batch_solver_seconds": float(result.seconds),
                             "solver_seed": s.solver_seed}
    if cuda:
        extra["peak_memory_mb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    return Restored(s.x, s.labels, s.measurement, result, extra)


def rehearse(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Run every (method, task, prior) of ``cells`` on image 0 as its cell's first batch would,
    up to the solver's first evaluation of a network or operator module
    (:func:`call_until_first_module`), so whatever the solver checks on entry (a blind operator
    given to a non-blind solver or the reverse, a noise model it does not handle, ``steps = 0``
    or another count it refuses, a prior of another domain) stops the run before its first row,
    naming the cell. Nothing is written.
    """
    for cell, where in rehearsal_cells(cells):
        try:
            s = _setup(ctx, cell, [0])
            kwargs = _evaluation_kwargs(s.solver, ctx.metrics, s.x)
        except DiffinvError as e:
            raise BenchConfigError(f"{where}: {e}") from None
        call_until_first_module(where, s.solver, s.measurement.y, s.public, s.prior,
                                seed=s.generators, **kwargs)


def _kernel_error(batch: Restored) -> list[float]:
    """``kernel-mse`` (:func:`diffinv.metrics.kernels.kernel_mse`) of the solver's
    ``trace["kernel"]`` against the true kernel of a blur family; NaN when the solver estimates
    no kernel or the operator is not a kernel blur."""
    from diffinv.metrics.kernels import kernel_mse

    n = batch.x.shape[0]
    est = batch.result.trace.get("kernel")
    true = true_kernels(batch)
    if est is None or true is None:
        return [float("nan")] * n
    return [float(v) for v in kernel_mse(est.detach().cpu(), true)]


def _measurement_residual(batch: Restored) -> list[float]:
    """``residual``: ``||y - A(x_hat)|| / sqrt(m)`` per image under the true operator (a blind
    family's hidden parameters included; evaluation only, the solver never sees them)."""
    import torch

    m = batch.measurement
    op = m.make_operator()
    params = {**m.params, **m.true_params}
    with torch.no_grad():
        x_hat = batch.result.x.detach().to(m.y.device, m.y.dtype)
        r = (m.y - op.forward(x_hat, **params)).reshape(m.y.shape[0], -1)
    return [float(v) for v in r.norm(dim=1) / r.shape[1] ** 0.5]


def true_kernels(batch: Restored) -> Any:
    """The hidden (B, k, k) kernels of a kernel-blur measurement (evaluation only), or None when
    the operator is not a kernel blur (rotation, zoom, inpainting, ...)."""
    return batch.measurement.true_kernels()


def score_batch(ctx: RunContext, batch: Restored) -> dict[str, list[float]]:
    """Step 4: every metric of the run, one value per image."""
    from diffinv.metrics import get_metric

    n = batch.x.shape[0]

    def column(name: str) -> list[float]:
        if name == KERNEL_MSE:
            return _kernel_error(batch)
        if name == RESIDUAL:
            return _measurement_residual(batch)
        if name == ORACLE_GAP:
            oracle = _from_trace(batch.result.trace, "oracle_psnr", n)
            out = _score(get_metric("psnr"), batch.result.x, batch.x, batch.labels)
            return [o - v for o, v in zip(oracle, out, strict=True)]
        if trace_key(name) is None:
            return _score(get_metric(name), batch.result.x, batch.x, batch.labels)
        return _from_trace(batch.result.trace, str(trace_key(name)), n)

    return {name: column(name) for name in ctx.metrics}


def run(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> list[UnitResult]:
    batch = restore_batch(ctx, cell, indices)
    scores = score_batch(ctx, batch)
    per_image = float(batch.result.seconds) / len(indices)
    return [UnitResult(metrics={name: scores[name][j] for name in ctx.metrics},
                       nfe=float(batch.result.nfe), seconds=per_image, extra=batch.extra)
            for j in range(len(indices))]


register_job_kind(
    "restore", run,
    axes=["method", "task", "prior"], replicate="image", target_key="n_images",
    options={"dataset": REQUIRED}, identity=("dataset",), metrics=None, statistic="mean",
    validate=validate, resolve=resolve_identity, rehearse=rehearse,
    description="measure dataset images, restore them with a solver and a prior, score them",
    help={**AXIS_HELP,
          "method": AXIS_HELP["method"] + f"; {PRESET} = \"tuned32\" takes the values tuned for the "
                    f"task's operator; {TRUE_OPERATOR} = true makes it a labelled reference given "
                    "a blind family's hidden parameters",
          "dataset": DATASET_HELP,
          "n_images": "images per cell: images 0 .. n_images - 1 of the split",
          "metrics": f"diffinv.metrics names (psnr, ssim, ...); \"{ORACLE}\" (best PSNR over the "
                     f"iterates), \"{ORACLE_GAP}\" (oracle - psnr), \"{KERNEL_MSE}\", \"{RESIDUAL}\" "
                     "(||y - A(x_hat)|| / sqrt(m), ~ sigma for a method that fits the data), "
                     f"\"{TRACE_PREFIX}KEY\" (a value of the solver's trace)"},
)
