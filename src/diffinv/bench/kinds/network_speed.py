"""Job kind "network-speed": wall time of one network evaluation, by UNet config and batch size.

Grid axes: ``configs`` (tables of :class:`diffinv.diffusion.unet.UNet` keyword arguments, with a
``name``), ``batch_sizes`` (integers) and ``passes`` ("forward" and/or "forward+backward"). A unit
is one timed repeat; ``repeats`` (default 20) of them per cell give the median and its 95%
order-statistic interval.

One repeat times ``calls`` consecutive evaluations after ``warmup`` untimed ones (the warm-up is
done each time the job function is entered, i.e. once per batch of ``batch_size`` repeats), with
the device synchronised before and after:

* "forward": ``eps = net(x, t)`` under ``torch.no_grad()`` (what a DDIM/DDPM sampling step costs);
* "forward+backward": the vector-Jacobian product ``v^T d net(x, t) / dx`` with the weights frozen
  (what a DPS-style guidance step costs: the gradient w.r.t. the input only).

Columns: ``ms/call`` = 1000 * elapsed / calls, ``ms/image`` = ms/call / batch, ``Mparams`` = the
number of parameters / 1e6. Weights are a seeded random initialisation (timing does not depend on
their values); x ~ N(0, I) and t ~ U{0..999} are drawn from a generator seeded by (seed, batch).
The zero-initialised output layers of the UNet are re-drawn so the backward pass is not trivially
sparse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import RunContext, UnitResult, register_job_kind
from diffinv.bench.kinds.common import THREADS_HELP
from diffinv.bench.spec import Cell
from diffinv.errors import UnknownNameError
from diffinv.seeding import image_seed

PASSES = ("forward", "forward+backward")
METRICS = ("ms/call", "ms/image", "Mparams")
DTYPES = ("float32", "float16", "bfloat16", "float64")


def _unet_class():
    from diffinv.diffusion.unet import UNet

    return UNet


def _check_options(ctx: RunContext) -> None:
    o = ctx.options
    for key in ("warmup", "calls", "threads"):
        v = o[key]
        least = 1 if key == "calls" else 0
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise BenchConfigError(f"[run] {key} must be an integer >= {least}; got {v!r}")
    if o["dtype"] not in DTYPES:
        raise UnknownNameError("dtype", str(o["dtype"]), list(DTYPES))


def validate(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Options, pass names, batch sizes and metric names; every config builds a UNet (on the
    meta device, so nothing is allocated)."""
    import torch

    _check_options(ctx)
    for m in ctx.metrics:
        if m not in METRICS:
            raise UnknownNameError("network-speed metric", m, list(METRICS))
    UNet = _unet_class()
    checked: set[str] = set()
    for cell in cells:
        p, b, c = cell["pass"], cell["batch"], cell["config"]
        if p.name not in PASSES or p.params:
            raise UnknownNameError("pass", p.name, list(PASSES))
        if not isinstance(b.value, int) or b.value < 1:
            raise BenchConfigError(f"batch size {b.label!r} must be a positive integer")
        if c.digest in checked:
            continue
        if c.value is not None or not c.params:
            raise BenchConfigError(f"config {c.label!r} must be a table of UNet arguments with a "
                                   "'name'")
        try:
            with torch.device("meta"):
                UNet(**c.params)
        except (TypeError, ValueError) as e:
            raise BenchConfigError(f"config {c.label!r}: UNet(**{dict(c.params)}) fails: "
                                   f"{e}") from None
        checked.add(c.digest)


def _network(ctx: RunContext, cell: Cell) -> Any:
    import torch

    c = cell["config"]

    def build() -> Any:
        dtype = getattr(torch, ctx.options["dtype"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(ctx.seed, 0))
            net = _unet_class()(**c.params)
            for p in net.parameters():  # undo zero-init so every layer does real work
                if p.ndim > 1 and not p.abs().sum():
                    torch.nn.init.normal_(p, std=0.02)
        return net.to(device=ctx.device, dtype=dtype).eval().requires_grad_(False)

    return ctx.cached(f"unet:{c.digest}", build)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def run(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> list[UnitResult]:
    import torch

    if ctx.options["threads"]:
        ctx.cached("threads", lambda: torch.set_num_threads(ctx.options["threads"]))
    net = _network(ctx, cell)
    batch, mode = int(cell["batch"].value), cell["pass"].name
    device = torch.device(ctx.device)
    dtype = getattr(torch, ctx.options["dtype"])
    n_params = sum(p.numel() for p in net.parameters())
    g = torch.Generator().manual_seed(image_seed(ctx.seed, batch))
    shape = (batch, net.in_channels, net.image_size, net.image_size)
    x = torch.randn(shape, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    v = torch.randn((batch, net.out_channels, *shape[2:]), generator=g).to(device, dtype)

    def evaluate() -> None:
        if mode == "forward":
            with torch.no_grad():
                net(x, t)
        else:
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(net(xg, t), xg, grad_outputs=v)

    for _ in range(ctx.options["warmup"]):
        evaluate()
    calls = ctx.options["calls"]
    out = []
    for _ in indices:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            evaluate()
        _sync(device)
        elapsed = time.perf_counter() - t0
        ms = 1000.0 * elapsed / calls
        out.append(UnitResult(metrics={"ms/call": ms, "ms/image": ms / batch,
                                       "Mparams": n_params / 1e6},
                              extra={"elapsed_s": elapsed, "calls": calls}))
    return out


register_job_kind(
    "network-speed", run,
    axes=[("config", "configs"), ("batch", "batch_sizes"), ("pass", "passes")],
    replicate="repeat", target_key="repeats", default_target=20,
    options={"warmup": 3, "calls": 10, "threads": 0, "dtype": "float32"},
    identity=("device", "threads", "dtype", "calls", "warmup"),
    metrics=METRICS, statistic="median", validate=validate,
    description="seconds per UNet evaluation (forward; forward+backward w.r.t. the input)",
    help={"config": "a table of diffinv.diffusion.unet.UNet arguments with a name",
          "batch": "a batch size (an integer)",
          "pass": " or ".join(f'"{p}"' for p in PASSES),
          "repeats": "timed repeats per cell (the table gives their median)",
          "warmup": "untimed evaluations before the repeats of a job call",
          "calls": "evaluations timed together in one repeat",
          "threads": THREADS_HELP,
          "dtype": f"the network's dtype: {', '.join(DTYPES)}"},
)
