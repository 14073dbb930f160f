r"""Job kind "dmplug-cost": what a DMPlug solve costs, image by image (issue 5, "Cost").

Grid axes, as for "restore": ``methods`` (DMPlug configurations only: ``name = "dmplug"`` with its
parameters, e.g. ``steps`` S, ``checkpoint``, ``iterations`` (the fixed budget), ``early_stop =
"wmv"`` with ``window`` W and ``patience`` P; Adam only), ``tasks`` (an operator and a noise spec)
and ``priors`` (a name, or a table with ``name`` and ``path``; identified by the SHA-256 of its
weights). The replicate is the image: image ``i`` of ``[run] dataset`` (``DATASET:SPLIT``),
``i = 0 .. n_images - 1``.

For image ``i`` of a cell, with ``s`` the run seed:

1. ``y_i = diffinv.physics.measure(x_i, A, noise, s, [i])``: the same measurement (operator
   parameters and noise from the per-image stream of (s, i)) as image ``i`` of a "restore" run
   with that seed, which is the same whether measured alone or in a batch;
2. the timed solve: the solver on image ``i`` *alone* (so its seconds, NFE and stop are its own),
   with the generator of ``image_seed(derived_seed(s, "solver"), i)`` as in "restore";
3. the memory probe, a separate call of the same configuration with ``iterations = 1`` on the
   same measurement: exactly one DMPlug iteration (``R(z)``, the loss, its gradient through
   ``R`` -- recomputing each step under checkpointing -- and one Adam step).

Columns (one value per image; the table gives the mean with its 95% t interval):

* ``iterations``: the fixed budget;
* ``stop_iteration``: the iteration (0-based) at which ES-WMV stopped, or the budget when it
  never did (or without early stopping); ``stopped``: 1 if it stopped, 0 otherwise;
* ``picked_iteration``: the iteration the output comes from (the ES-WMV pick);
* ``iterations_run``: iterations actually run (``stop_iteration + 1`` when stopped, the budget
  when not, fewer after a non-finite loss);
* ``seconds/iteration``: the solve's wall time over ``iterations_run``;
* NFE (the table's NFE column): forward network passes of the solve, counted by the prior, so the
  recomputation under checkpointing is included: ``S`` per iteration without checkpointing,
  ``2 S`` with it (``S`` in the forward pass, ``S`` recomputed in the backward pass);
* s/image (the table's seconds column): the solver's wall time ``Result.seconds``;
* ``peak_mem_MiB``: the probe's peak *tensor* memory above what was allocated before it (weights,
  ``y`` and the data are not counted), in MiB. On CUDA: ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats``, minus ``torch.cuda.memory_allocated`` at the start. On CPU:
  the allocation and free events of torch's CPU allocator recorded by ``torch.profiler`` with
  ``profile_memory=True``, summed in time order: the peak of the bytes allocated during the probe
  and not yet freed. Both count the allocator's bytes (activations kept for the backward pass,
  temporaries, gradients, Adam's state), **not** the process RSS. The probe is measured apart
  from the timed solve because the profiler slows the run down; the peak of one iteration is
  the peak of every iteration (each one builds and frees the same graph), except for ES-WMV's
  window buffer and Adam's state, allocated once in the first iteration and so included. With
  CUDA the whole solve's ``max_memory_allocated`` (absolute, weights included) is also stored in
  each row's ``extra`` as ``solve_peak_MiB``.

Each row's ``extra`` also holds the loss at the first and at the picked iteration
(``loss_first``, ``loss_picked``): they identify the measurement and the iterates (checkpointing
must not change them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import REQUIRED, RunContext, UnitResult, register_job_kind
from diffinv.bench.kinds.common import (
    AXIS_HELP,
    DATASET_HELP,
    cached_prior,
    call_until_first_module,
    cell_name,
    dataset_images,
    dataset_split,
    derived_seed,
    parse_dataset,
    resolve_identity,
    solver_factory,
    task_parts,
    validate_entries,
)
from diffinv.bench.spec import Cell
from diffinv.errors import DiffinvError, UnknownNameError

METRICS = ("iterations", "stop_iteration", "stopped", "picked_iteration", "iterations_run",
           "seconds/iteration", "peak_mem_MiB")
MIB = 2.0 ** 20


def validate(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Data set and split, N against the split, metric names, and every method (DMPlug with
    Adam, valid parameters), operator, noise and prior source, before any work."""
    from diffinv.data import SPLITS, canonical_name

    name, split = parse_dataset(str(ctx.options["dataset"]))
    canonical_name(name)
    if split not in SPLITS:
        raise UnknownNameError("split", split, list(SPLITS))
    for m in ctx.metrics:
        if m not in METRICS:
            raise UnknownNameError("dmplug-cost metric", m, list(METRICS))
    for cell in cells:
        method = cell["method"]
        if method.name != "dmplug":
            raise BenchConfigError(f"method {method.label!r}: the dmplug-cost kind measures "
                                   f"DMPlug only, not {method.name!r}")
        if method.params.get("optimizer", "adam") != "adam":
            raise BenchConfigError(f"method {method.label!r}: the dmplug-cost kind measures "
                                   "Adam DMPlug (an L-BFGS 'iteration' is one evaluation, not "
                                   "one step of the budget)")
    validate_entries(cells)
    n = len(dataset_split(ctx))
    most = max(c.target for c in cells)
    if most > n:
        raise BenchConfigError(f"n_images {most} exceeds the {n} images of {name}:{split}")


def _cpu_probe_peak(fn: Any) -> float:
    """Peak bytes allocated by torch's CPU allocator during ``fn()`` and not yet freed.

    Reads the allocator's ``[memory]`` events from ``torch.profiler`` (``profile_memory=True``):
    each allocation is a positive byte count, each free of a block allocated during the run a
    negative one; their running sum in time order is the live memory added by ``fn``.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError as e:  # pragma: no cover - depends on the torch version
        raise DiffinvError(f"this torch's profiler gives no allocator events: {e}") from None
    mem = sorted((e for e in events if e.name() == "[memory]" and
                  str(e.device_type()).endswith("CPU")), key=lambda e: e.start_ns())
    live = peak = 0
    for e in mem:
        live += int(e.nbytes())
        peak = max(peak, live)
    return float(peak)


def _probe_peak_mib(solver: Any, y: Any, pub: Any, prior: Any, gen: Any) -> float:
    """Peak tensor memory (MiB) of one DMPlug iteration above what was allocated before it."""
    import torch

    def call() -> None:
        solver(y, pub, prior, seed=[gen])

    if y.device.type == "cuda":
        torch.cuda.synchronize(y.device)
        base = torch.cuda.memory_allocated(y.device)
        torch.cuda.reset_peak_memory_stats(y.device)
        call()
        torch.cuda.synchronize(y.device)
        return (torch.cuda.max_memory_allocated(y.device) - base) / MIB
    if y.device.type != "cpu":
        raise DiffinvError(f"peak memory is measured on CPU or CUDA, not {y.device.type}")
    return _cpu_probe_peak(call) / MIB


def rehearse(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Every cell's solver on image 0, as :func:`run` builds it, up to its first network
    evaluation (:func:`~diffinv.bench.kinds.common.call_until_first_module`): what it refuses on
    entry stops the run before its first row."""
    from diffinv.physics import make_operator, measure
    from diffinv.seeding import image_generators

    for cell in cells:
        where = cell_name(cell)
        try:
            prior = cached_prior(ctx, cell["prior"])
            x, _ = dataset_images(ctx, [0])
            op_name, op_params, noise_spec = task_parts(cell["task"])
            op = make_operator(op_name, **op_params).to(ctx.device)
            solver = solver_factory()(cell["method"].name, **cell["method"].params)
            solver.progress = False
            m = measure(x, op, noise_spec, ctx.seed, [0],
                        domain=str(getattr(prior, "domain", "image")),
                        source=ctx.options["dataset"])
        except DiffinvError as e:
            raise BenchConfigError(f"{where}: {e}") from None
        call_until_first_module(where, solver, m.y, m.public(), prior,
                                seed=image_generators(derived_seed(ctx.seed, "solver"), [0]))


def _one(trace: dict[str, Any], key: str) -> int:
    v = trace[key]
    return int(v.reshape(-1)[0]) if hasattr(v, "reshape") else int(v)


def run(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> list[UnitResult]:
    import torch

    from diffinv.physics import make_operator, measure
    from diffinv.seeding import image_generators

    method, task = cell["method"], cell["task"]
    prior = cached_prior(ctx, cell["prior"])
    x, _ = dataset_images(ctx, indices)
    op_name, op_params, noise_spec = task_parts(task)
    op = make_operator(op_name, **op_params).to(ctx.device)
    make_solver = solver_factory()
    solver = make_solver(method.name, **method.params)
    probe = make_solver(method.name, **{**method.params, "iterations": 1})
    solver.progress = probe.progress = False
    solver_seed = derived_seed(ctx.seed, "solver")
    cuda = torch.device(ctx.device).type == "cuda"
    domain = str(getattr(prior, "domain", "image"))

    out = []
    for j, i in enumerate(indices):
        m = measure(x[j:j + 1], op, noise_spec, ctx.seed, [int(i)], domain=domain,
                    source=ctx.options["dataset"])
        pub = m.public()
        if cuda:
            torch.cuda.synchronize(ctx.device)
            torch.cuda.reset_peak_memory_stats(ctx.device)
        r = solver(m.y, pub, prior, seed=image_generators(solver_seed, [int(i)]))
        extra: dict[str, Any] = {"solver_seed": solver_seed,
                                 "nonfinite_iteration": _one(r.trace, "nonfinite_iteration"),
                                 "backward_nfe": int(r.trace.get("backward_nfe", 0) or 0),
                                 "memory": "cuda max_memory_allocated" if cuda else
                                 "cpu allocator events (torch.profiler profile_memory)"}
        if cuda:
            extra["solve_peak_MiB"] = torch.cuda.max_memory_allocated(ctx.device) / MIB
        peak = _probe_peak_mib(probe, m.y, m.public(), prior,
                               image_generators(solver_seed, [int(i)])[0])

        budget = int(r.trace["iterations"])
        stop = _one(r.trace, "stop_iteration")
        ran = _one(r.trace, "iterations_run")
        pick = _one(r.trace, "picked_iteration")
        loss = r.trace["loss"][:, 0]
        extra.update(loss_first=float(loss[0]), loss_picked=float(loss[pick]))
        seconds = float(r.seconds)
        metrics = {"iterations": float(budget),
                   "stop_iteration": float(stop if stop >= 0 else budget),
                   "stopped": float(stop >= 0),
                   "picked_iteration": float(pick),
                   "iterations_run": float(ran),
                   "seconds/iteration": seconds / ran if ran > 0 else math.nan,
                   "peak_mem_MiB": peak}
        out.append(UnitResult(metrics={k: metrics[k] for k in ctx.metrics}, nfe=float(r.nfe),
                              seconds=seconds, extra=extra))
    return out


register_job_kind(
    "dmplug-cost", run,
    axes=["method", "task", "prior"], replicate="image", target_key="n_images",
    options={"dataset": REQUIRED}, identity=("dataset", "device"), metrics=METRICS,
    statistic="mean", validate=validate, resolve=resolve_identity, rehearse=rehearse,
    description="DMPlug's cost per image: iterations to the ES-WMV stop vs the budget, NFE, "
                "seconds, peak tensor memory of one iteration (checkpointing on/off)",
    help={**AXIS_HELP,
          "method": "a DMPlug configuration: name = \"dmplug\" with its parameters (steps, "
                    "checkpoint, iterations, early_stop = \"wmv\" with window and patience)",
          "dataset": DATASET_HELP,
          "n_images": "images per cell, each solved alone"},
)
