r"""ES-WMV: early stopping by the windowed moving variance of the iterates, per image.

The rule of Wang et al. (ES-WMV, "Early stopping for deep image prior"; reference implementation
``EarlyStop`` / ``myMetric`` of their ``ES_WMV.ipynb``, methods.md section 4.4), reusable by any
iterative solver that produces one iterate ``x_t`` per iteration.

For one image, with ``N`` values per iterate and a FIFO window of the last ``W`` iterates
``x_{t-W+1}, ..., x_t``, once the window is full (``t >= W - 1``, 0-based) every iteration is a
check:

.. math::

    \bar x_t = \frac1W \sum_{j=t-W+1}^{t} x_j, \qquad
    \mathrm{VAR}(t) = \frac1W \sum_{j=t-W+1}^{t} \frac1N \lVert x_j - \bar x_t \rVert^2 .

The rule tracks the smallest VAR seen: a check with ``VAR(t) < min`` (strictly) makes ``t`` the
*picked* iteration and resets a counter; any other check increments it, and the image *stops*
at the check where the counter reaches the patience ``P`` (so, with no later improvement, at
``t_pick + P``). The output is the iterate ``x_{t_pick}``: the newest iterate of the window of
smallest variance, as in the reference (``best_epoch``). A run that ends before its stop returns
the pick so far; before the first check there is no pick (:meth:`WMVEarlyStopping.pick` then falls
back to the iterate the caller gives, normally the last one).

**Batches.** Every image has its own window, minimum, counter and stop: VAR is computed per image,
so an image's pick and stop do not depend on the rest of the batch. A batched solver keeps
iterating until every image has stopped; iterates of an image pushed after its stop leave its
pick frozen (DMPlug stops computing a stopped image and leaves it out instead). Images can be
left out of an update (``active=False``, e.g. after a non-finite loss or their stop): their
state is untouched.

Defaults: ``W = 50``, ``P = 300``, chosen once on fashion32 validation images by the benchmark's
convergence study (``benchmarks/dmplug_convergence_picks.md``: DMPlug on SR x4, random inpainting
and nonlinear deblurring at sigma = 0.01 and SR x4 under level-4 Gaussian noise, 8 images each;
the rule with the smallest worst per-problem shortfall to the best candidate, 2.0 dB). The
reference's DIP settings ``W = 100``, ``P = 1000`` (methods.md 4.4; the values DMPlug used are not
published) never stopped in time under heavy noise there (9.3 dB, against 10.4 for (50, 300) and
12.4 for (25, 100); the PSNR peaks by iteration ~50 and falls 6 dB after), while short patiences
stop nonlinear deblurring far too early (21.6 dB for (25, 100) against 24.5 for (100, 1000) and
25.9 at the 5,000th iterate): no single (W, P) suits both, so name your own where the problem is
known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError

#: defaults chosen on validation images (benchmarks/dmplug_convergence_picks.md; module docstring)
DEFAULT_WINDOW = 50
DEFAULT_PATIENCE = 300


def check_window_patience(window: int, patience: int) -> tuple[int, int]:
    """Validate ``W >= 2`` (one iterate has no spread) and ``P >= 1``; return them as ints."""
    for value, name, low in ((window, "ES-WMV window W", 2), (patience, "ES-WMV patience P", 1)):
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
                or int(value) < low:
            raise DiffinvError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(window), int(patience)


class WMVEarlyStopping:
    """Per-image ES-WMV state (see the module docstring).

    Call :meth:`update` once per iteration with the batch of iterates ``(B, ...)``; read
    :attr:`stopped`, :attr:`best_iteration`, :attr:`stop_iteration`, :attr:`variance` and
    :meth:`pick`. ``iteration`` numbers are the caller's (default: 0, 1, 2, ... per call).
    """

    def __init__(self, window: int = DEFAULT_WINDOW, patience: int = DEFAULT_PATIENCE):
        self.window, self.patience = check_window_patience(window, patience)
        self._calls = 0
        self._buf: Tensor | None = None

    # ------------------------------------------------------------------ state
    def _init(self, x: Tensor) -> None:
        B = x.shape[0]
        self._shape = tuple(x.shape)
        self._buf = torch.zeros((self.window, B, x[0].numel()), dtype=torch.float64,
                                device=x.device)
        self._count = torch.zeros(B, dtype=torch.long)
        self.best_score = torch.full((B,), float("inf"), dtype=torch.float64)
        self.best_iteration = torch.full((B,), -1, dtype=torch.long)
        self.stop_iteration = torch.full((B,), -1, dtype=torch.long)
        self.wait = torch.zeros(B, dtype=torch.long)
        self.variance = torch.full((B,), float("nan"), dtype=torch.float64)
        self._best = torch.zeros_like(x, memory_format=torch.contiguous_format).detach()

    @property
    def started(self) -> bool:
        return self._buf is not None

    @property
    def stopped(self) -> Tensor:
        """(B,) bool: whether each image has reached its stop."""
        if self._buf is None:
            raise DiffinvError("ES-WMV has seen no iterate yet")
        return self.stop_iteration >= 0

    @property
    def all_stopped(self) -> bool:
        return self._buf is not None and bool(self.stopped.all())

    @property
    def checked(self) -> Tensor:
        """(B,) bool: whether each image has had at least one check (its window was full)."""
        if self._buf is None:
            raise DiffinvError("ES-WMV has seen no iterate yet")
        return self.best_iteration >= 0

    # ------------------------------------------------------------------ update
    def update(self, x: Tensor, iteration: int | None = None,
               active: Tensor | None = None) -> Tensor:
        """Push the iterates ``x`` (B, ...) of one iteration; return the (B,) VAR (NaN: no check).

        ``active`` (B,) bool: images to update (default all); the others keep their state.
        Afterwards :attr:`picked_now` (B,) tells which images' pick moved to this iteration.
        """
        x = x.detach()
        if x.ndim < 1:
            raise ShapeError("ES-WMV iterates must be a batch (B, ...)")
        if self._buf is None:
            self._init(x)
        elif tuple(x.shape) != self._shape:
            raise ShapeError(f"ES-WMV got iterates of shape {tuple(x.shape)} after "
                             f"{self._shape}")
        B = x.shape[0]
        it = self._calls if iteration is None else int(iteration)
        self._calls += 1
        act = torch.ones(B, dtype=torch.bool) if active is None else \
            torch.as_tensor(active, dtype=torch.bool).cpu().reshape(B)
        flat = x.reshape(B, -1).to(torch.float64)
        if not torch.isfinite(flat[act.to(flat.device)]).all():
            raise NonFiniteError("ES-WMV got a non-finite iterate; leave that image out "
                                 "(active=False)")
        idx = act.nonzero().flatten()
        pos = self._count[idx] % self.window
        self._buf[pos.to(self._buf.device), idx.to(self._buf.device)] = \
            flat[idx.to(flat.device)]
        self._count[idx] += 1
        full = act & (self._count >= self.window)
        var = torch.full((B,), float("nan"), dtype=torch.float64)
        self.picked_now = torch.zeros(B, dtype=torch.bool)
        if full.any():
            f = full.nonzero().flatten()
            win = self._buf[:, f.to(self._buf.device)]  # (W, F, N)
            mean = win.mean(0, keepdim=True)
            v = (win - mean).square().mean(2).mean(0).cpu()  # (F,)
            var[f] = v
            # checks only for images that have not stopped yet (the pick is frozen after)
            live = ~self.stopped[f]
            better = live & (v < self.best_score[f])
            worse = live & ~better
            fb, fw = f[better], f[worse]
            self.best_score[fb] = v[better]
            self.best_iteration[fb] = it
            self.wait[fb] = 0
            self.picked_now[fb] = True
            if len(fb):
                dev = self._best.device
                self._best[fb.to(dev)] = x[fb.to(x.device)].to(self._best.dtype).to(dev)
            self.wait[fw] += 1
            newly = fw[self.wait[fw] >= self.patience]
            self.stop_iteration[newly] = it
        self.variance = var
        return var

    # ------------------------------------------------------------------ output
    def pick(self, fallback: Tensor) -> Tensor:
        """The picked iterates (B, ...); images with no check yet take ``fallback``'s."""
        if self._buf is None:
            return fallback
        ok = self.checked.to(fallback.device).reshape(-1, *([1] * (fallback.ndim - 1)))
        return torch.where(ok, self._best.to(fallback), fallback)


def plot_trace(trace: Mapping[str, Any], path: str | Path, *, image: int = 0,
               title: str = "") -> list[Path]:
    """PNG plots of one image's run: loss and VAR (log scale) and, when known, PSNR.

    ``trace`` holds per-iteration (iterations, B) tensors ``"loss"``, ``"variance"`` and
    optionally ``"psnr"`` (evaluation only), plus ``"picked_iteration"`` / ``"stop_iteration"``
    (B,) (-1: none). The first file is ``path`` (loss and VAR); PSNR goes to
    ``<stem>_psnr.png`` beside it. The stop and the pick are marked; so is the oracle peak (the
    best-PSNR iterate, which is not the method's output).
    """
    from diffinv.plots import plot_curves

    def column(name: str) -> tuple[list[float], list[float]] | None:
        v = trace.get(name)
        if v is None:
            return None
        col = torch.as_tensor(v, dtype=torch.float64)[:, image]
        keep = torch.isfinite(col)
        xs = torch.arange(len(col))[keep]
        return xs.tolist(), col[keep].tolist()

    markers: dict[str, float] = {}
    for key, label in (("picked_iteration", "ES-WMV pick"), ("stop_iteration", "stop")):
        if key in trace and int(trace[key][image]) >= 0:
            markers[f"{label} ({int(trace[key][image])})"] = float(trace[key][image])
    curves = {}
    for name, label in (("loss", "loss"), ("variance", "VAR")):
        c = column(name)
        if c is not None and c[0]:
            curves[label] = c
    if not curves:
        raise DiffinvError("the trace has no loss or VAR curve to plot")
    path = Path(path)
    out = [plot_curves(curves, path, xlabel="iteration", logy=True, markers=markers,
                       title=title or f"image {image}")]
    psnr = column("psnr")
    if psnr is not None and psnr[0]:
        m = dict(markers)
        if "oracle_iteration" in trace:
            m[f"oracle peak ({int(trace['oracle_iteration'][image])})"] = \
                float(trace["oracle_iteration"][image])
        out.append(plot_curves({"PSNR (dB)": psnr}, path.with_name(f"{path.stem}_psnr.png"),
                               xlabel="iteration", ylabel="PSNR (dB)", markers=m,
                               title=(title or f"image {image}") + " (truth: evaluation only)"))
    return out


def stack_columns(rows: Sequence[Tensor], batch: int) -> Tensor:
    """Stack per-iteration (B,) rows into an (iterations, B) float64 tensor (empty if none)."""
    if not rows:
        return torch.zeros((0, batch), dtype=torch.float64)
    return torch.stack([r.detach().to("cpu", torch.float64) for r in rows])
