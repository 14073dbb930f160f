r"""Job kind "overhead": a solver's wall time over the time of its bare network passes.

Grid axes: ``methods`` (solver name + parameters, e.g. a reduced step count: the ratio is per
step), ``tasks`` (an operator and a noise spec, as for "restore"), ``priors`` (embedded name, or a
table with ``name`` and ``path``; identified by the SHA-256 of its weights) and ``batch_sizes``.
A unit is one timed repeat; ``repeats`` (default 6) of them per cell give the median and its 95%
order-statistic interval.

One repeat, at batch ``b``:

1. ``T_solver``: the solver's own wall time ``Result.seconds`` for one call on a batch of ``b``
   measurements (images ``x ~ U[-1, 1]`` drawn from the generator of (run seed, b), measured by
   :func:`diffinv.physics.measure` with the run seed; timing does not depend on pixel values);
2. ``T_net``: the time of the same network passes with nothing else, timed right after on the same
   batch size: ``n_b = trace["backward_nfe"]`` passes ``v^T d eps_theta(x, t) / dx`` (forward +
   backward w.r.t. the input, the cost of a DPS guidance step) and ``NFE - n_b`` forward passes
   under ``torch.no_grad()`` (a DDRM step); ``t`` runs over ``NFE`` evenly spaced timesteps,
   ``x, v ~ N(0, I)``;
3. ``ratio = T_solver / T_net`` (1 would mean the solver costs exactly its network passes), and
   ``overhead_ms/step = 1000 (T_solver - T_net) / NFE``.

Before the repeats of a job call, ``warmup`` untimed solver calls and bare passes are run; the
device is synchronised around every timing.

**Where the rest goes** (``profile = true``, default): one further, untimed-for-the-ratio solver
call with manual timers in module hooks (device synchronised in each hook): the network's forward
(forward pre/post hooks on ``prior.network``), its backward (full backward pre-hook to full
backward hook: the gradient through the network w.r.t. its input), and the operator's forward
and backward (the same hooks on the :class:`~diffinv.physics.base.Operator` the solver builds).
``rest = T_solver - those four``: the sampler and guidance arithmetic, SVD-domain transforms (DDRM
applies the operator through its SVD, so it lands here), random draws and Python. The columns
``net_fwd``, ``net_bwd``, ``op``, ``rest`` give these as fractions of that call's wall time. The
hooks add a small cost of their own and are never active during the timed repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import RunContext, UnitResult, register_job_kind
from diffinv.bench.kinds.common import (
    AXIS_HELP,
    THREADS_HELP,
    cached_prior,
    call_until_first_module,
    rehearsal_cells,
    resolve_identity,
    solver_factory,
    task_parts,
    validate_entries,
)
from diffinv.bench.spec import Cell
from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.seeding import image_seed

TIMING = ("ratio", "solver_s", "network_s", "overhead_ms/step")
PROFILE = ("net_fwd", "net_bwd", "op", "rest")
METRICS = TIMING + PROFILE


def _check_options(ctx: RunContext) -> None:
    o = ctx.options
    for key in ("warmup", "threads"):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BenchConfigError(f"[run] {key} must be an integer >= 0; got {v!r}")
    if not isinstance(o["profile"], bool):
        raise BenchConfigError(f"[run] profile must be true or false; got {o['profile']!r}")


def validate(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Options, metric names, batch sizes, and every solver / operator / noise / prior name."""
    _check_options(ctx)
    for m in ctx.metrics:
        if m not in METRICS:
            raise UnknownNameError("overhead metric", m, list(METRICS))
        if m in PROFILE and not ctx.options["profile"]:
            raise BenchConfigError(f"metric {m!r} needs [run] profile = true")
    for cell in cells:
        b = cell["batch"]
        if isinstance(b.value, bool) or not isinstance(b.value, int) or b.value < 1:
            raise BenchConfigError(f"batch size {b.label!r} must be a positive integer")
    validate_entries(cells, skip=("batch",))


def rehearse(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Every (method, task, prior) of ``cells`` on a batch of one, up to the solver's first
    network evaluation (:func:`~diffinv.bench.kinds.common.call_until_first_module`): what the
    solver refuses on entry stops the run before its first row."""
    for cell, where in rehearsal_cells(cells):
        try:
            prior = cached_prior(ctx, cell["prior"])
            solver = solver_factory()(cell["method"].name, **cell["method"].params)
            solver.progress = False
            y, pub = _problem(ctx, cell, prior, 1)
        except DiffinvError as e:
            raise BenchConfigError(f"{where}: {e}") from None
        call_until_first_module(where, solver, y, pub, prior, seed=image_seed(ctx.seed, 1_000_003))


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HookTimers:
    """Wall time spent between a module's forward (and backward) hooks, summed per name."""

    def __init__(self, device: Any):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._start: dict[str, list[float]] = {}
        self._handles: list[Any] = []

    def _enter(self, key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            _sync(self.device)
            self._start.setdefault(key, []).append(time.perf_counter())
        return hook

    def _exit(self, key: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            _sync(self.device)
            stack = self._start.get(key)
            if stack:  # a backward hook without its pre-hook (nothing needed a gradient) is skipped
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - stack.pop()
        return hook

    def watch(self, module: Any, name: str) -> None:
        """Time ``module``'s forward as ``name + "_fwd"`` and its backward as ``name + "_bwd"``."""
        self._handles += [
            module.register_forward_pre_hook(self._enter(f"{name}_fwd")),
            module.register_forward_hook(self._exit(f"{name}_fwd")),
            module.register_full_backward_pre_hook(self._enter(f"{name}_bwd")),
            module.register_full_backward_hook(self._exit(f"{name}_bwd")),
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def bare_passes(net: Any, x: Any, v: Any, labels: Sequence[Any], n_backward: int) -> float:
    """Seconds for ``n_backward`` input-gradient passes then ``len(labels) - n_backward`` forward
    passes of ``net`` on batch ``x`` (device synchronised before and after)."""
    import torch

    _sync(x.device)
    t0 = time.perf_counter()
    for i, t in enumerate(labels):
        if i < n_backward:
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(net(xg, t), xg, grad_outputs=v)
        else:
            with torch.no_grad():
                net(x, t)
    _sync(x.device)
    return time.perf_counter() - t0


def _problem(ctx: RunContext, cell: Cell, prior: Any, batch: int) -> tuple[Any, Any]:
    """(y, the public measurement) of a seeded batch of random images, cached per cell."""
    import torch

    from diffinv.physics import make_operator, measure

    def build() -> tuple[Any, Any]:
        op_name, op_params, noise = task_parts(cell["task"])
        op = make_operator(op_name, **op_params).to(ctx.device)
        g = torch.Generator().manual_seed(image_seed(ctx.seed, batch))
        x = (torch.rand((batch, *prior.image_shape), generator=g) * 2 - 1).to(ctx.device)
        m = measure(x, op, noise, ctx.seed, list(range(batch)),
                    domain=str(getattr(prior, "domain", "image")), source="uniform noise")
        pub = m.public()
        return m.y, pub

    key = f"overhead-problem:{cell['task'].digest}:{cell['prior'].digest}:{batch}"
    return ctx.cached(key, build)


def _profile(solver: Any, y: Any, pub: Any, prior: Any, seed: int) -> dict[str, float]:
    """Fractions of one solver call's wall time in network fwd/bwd, operator, and the rest."""
    timers = HookTimers(y.device)
    make_op = pub.make_operator

    def watched_operator() -> Any:
        op = make_op()
        timers.watch(op, "op")
        return op

    timers.watch(prior.network, "net")
    pub.make_operator = watched_operator  # instance attribute: this call only
    try:
        total = float(solver(y, pub, prior, seed=seed).seconds)
    finally:
        del pub.make_operator
        timers.remove()
    s = timers.seconds
    net_f, net_b = s.get("net_fwd", 0.0), s.get("net_bwd", 0.0)
    op = s.get("op_fwd", 0.0) + s.get("op_bwd", 0.0)
    return {"net_fwd": net_f / total, "net_bwd": net_b / total, "op": op / total,
            "rest": (total - net_f - net_b - op) / total}


def run(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> list[UnitResult]:
    import torch

    if ctx.options["threads"]:
        ctx.cached("threads", lambda: torch.set_num_threads(ctx.options["threads"]))
    prior = cached_prior(ctx, cell["prior"])
    method = cell["method"]
    batch = int(cell["batch"].value)
    solver = solver_factory()(method.name, **method.params)
    solver.progress = False
    y, pub = _problem(ctx, cell, prior, batch)
    device = y.device
    seed = image_seed(ctx.seed, 1_000_003)

    g = torch.Generator().manual_seed(image_seed(ctx.seed, batch))
    shape = (batch, *prior.image_shape)
    x = torch.randn(shape, generator=g).to(device)
    net = prior.network
    with torch.no_grad():  # the output shape (2C channels for a learned-variance network)
        out_shape = net(x[:1], prior.schedule.timesteps[:1].to(device)).shape
    v = torch.randn((batch, *out_shape[1:]), generator=g).to(device)

    def bare(nfe: int, n_backward: int) -> float:
        ts = torch.linspace(prior.num_timesteps - 1, 0, max(nfe, 1)).round().long()[:nfe]
        labels = [prior.schedule.timesteps[t].expand(batch).to(device) for t in ts]
        return bare_passes(net, x, v, labels, n_backward)

    for _ in range(ctx.options["warmup"]):
        r = solver(y, pub, prior, seed=seed)
        bare(int(r.nfe), int(r.trace.get("backward_nfe", 0) or 0))

    out = []
    for _ in indices:
        r = solver(y, pub, prior, seed=seed)
        nfe, n_b = int(r.nfe), int(r.trace.get("backward_nfe", 0) or 0)
        if nfe < 1:
            raise DiffinvError(f"solver {method.label!r} made no network call: no ratio")
        t_net = bare(nfe, n_b)
        t_sol = float(r.seconds)
        metrics = {"ratio": t_sol / t_net, "solver_s": t_sol, "network_s": t_net,
                   "overhead_ms/step": 1000.0 * (t_sol - t_net) / nfe}
        out.append(UnitResult(metrics=metrics, nfe=float(nfe), seconds=t_sol,
                              extra={"backward_nfe": n_b, "batch": batch}))
    if ctx.options["profile"] and out:
        split = _profile(solver, y, pub, prior, seed)
        for u in out:  # one profiled call per job call; its split is stored with each repeat
            u.metrics.update(split)
    return out


register_job_kind(
    "overhead", run,
    axes=[("method", "methods"), ("task", "tasks"), ("prior", "priors"),
          ("batch", "batch_sizes")],
    replicate="repeat", target_key="repeats", default_target=6,
    options={"warmup": 1, "threads": 0, "profile": True},
    identity=("device", "threads", "warmup", "profile"),
    metrics=METRICS, statistic="median", validate=validate, resolve=resolve_identity, rehearse=rehearse,
    description="solver seconds over the seconds of its bare network passes (batch 1 and 64)",
    help={**AXIS_HELP,
          "method": AXIS_HELP["method"] + " (e.g. a reduced step count: the ratio is per step)",
          "batch": "a batch size (an integer)",
          "repeats": "timed repeats per cell (the table gives their median)",
          "warmup": "untimed solver calls and bare passes before the repeats of a job call",
          "threads": THREADS_HELP,
          "profile": "also split one solver call into network forward / backward, operator and "
                     "the rest (the profile columns)"},
)
