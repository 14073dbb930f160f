r"""DMPlug (Wang et al., NeurIPS 2024): optimise the seed of a few-step deterministic sampler.

**The generator.** ``R(z)`` is ``S`` deterministic DDIM steps (eta = 0) on the "leading" grid
``t_i = i * (T // S)`` taken in decreasing order (666, 333, 0 for ``T = 1000``, ``S = 3``, as
diffusers' ``DDIMScheduler.set_timesteps`` in the official code); the seed ``z`` enters the first
network call *labelled* ``t_{S-1}`` (666, not 999: methods.md 4.2). One step from ``t`` to
``s`` (``s = -1`` after the last: ``abar_{-1} = 1``, ``set_alpha_to_one``):

.. math::

    \hat x_0 = \mathrm{clip}\Big(\frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta(x_t, t)}
    {\sqrt{\bar\alpha_t}}, -1, 1\Big), \quad
    \epsilon' = \frac{x_t - \sqrt{\bar\alpha_t}\,\hat x_0}{\sqrt{1 - \bar\alpha_t}}, \quad
    x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1 - \bar\alpha_s}\,\epsilon'

(``clip_sample=True``, ``use_clipped_model_output=True``), and ``R(z) = clip(x_{-1}, -1, 1)``.
``R`` is differentiable end to end; with ``checkpoint=True`` each step is recomputed in the
backward pass (:func:`torch.utils.checkpoint.checkpoint`), so the network activations kept do
not grow with ``S``: only each step's input (one image) is kept, and one step's activations at a
time are rebuilt (the recomputation costs ``S`` more forward network calls per iteration, counted
in ``nfe``).

**Flow priors** (:class:`~diffinv.flow.prior.FlowPrior`) bring their own deterministic map:
``R(z) = prior.seed_map(z, S)``, the source sample of the standard-normal seed ``z`` followed by
``S`` Euler steps of the ODE from t = 0 to 1 (through the clamped estimate when ``clip``), so
the seed enters at the source, not at a DDIM row; ``spacing`` does not apply to them.

**The problem.** ``min_z sum_i loss(y_i, A(R(z)_i))`` with the per-image loss the mean squared
error over the image's measurement (``nn.MSELoss`` of the official code for one image; ``"l1"``:
mean absolute error). The objective is a *sum over images*: image ``i``'s gradient depends only on
``z_i``, and Adam's update is elementwise, so a batch gives the same result as its images one by
one. ``z_i ~ N(0, I)`` from image ``i``'s generator. Optimisers: Adam (lr 1e-2, official
default; 5,000 iterations for SR/inpainting, 10,000 for nonlinear deblurring in the official code)
or L-BFGS (lr 0.1, 300 outer steps of up to 20 evaluations, torch defaults otherwise, as the
official ``sr_inp_nonlinear_lbfgs.py``). L-BFGS's line search and curvature pairs are global over
its parameters, so it is run image by image (batch independence by construction); an "iteration"
of its trace is one objective evaluation.

**Blind problems** (``blind=True``, for the blind families of :mod:`diffinv.physics`): unknown
operator parameters are optimised jointly with ``z`` by the same Adam, in their own parameter group:

* blind Gaussian and motion blur, and the wide kernel families of
  :mod:`diffinv.physics.kernel_families`: a free kernel ``k_i = softmax(w_i)`` reshaped to
  ``size x size`` (the operator's kernel size unless ``kernel_size`` is given), logits
  ``w_i ~ N(0, I)`` from image ``i``'s generator, ``kernel_lr = 0.1`` (official ``bid.py``; no
  kernel regulariser), applied with the operator's boundary rule. (The official code uses a
  64x64 kernel with zero padding at 256x256; our blind families fix size and boundary.)
* blind rotation / zoom blur: ``theta_i = lo + (hi - lo) sigmoid(u_i)`` (``z_i`` likewise), with
  ``(lo, hi)`` the family's public range (``theta_range`` / ``z_range``), so the estimate stays in
  range; ``u_i = 0`` at the start (the middle of the range); ``param_lr = 0.1``. These families are
  not in the DMPlug paper (they come from CL-DPS); the parametrisation and learning rate are our
  choice.

**Honest output.** With ``early_stop="wmv"`` the result is the ES-WMV pick
(:mod:`diffinv.solvers.early_stopping`) per image; without it, the last iterate. An image's run
ends at its stop: from then on only the images still running go through ``R`` (a stopped image
costs nothing more, and nothing more of it is logged), and the batch ends when every image has
stopped (or at the budget). So every per-image column (loss, PSNR, oracle, iterations run) is
what the image alone would give. A ground truth may be given *for evaluation only*
(``solver(..., truth=x)``): the trace then holds the PSNR of every iterate the image's run
computed and the best of them as ``"oracle_psnr"`` / ``"oracle_iteration"`` (the figure the
official script reports; with early stopping, the peak up to the stop, since no later iterate is
computed), and the truth is never used to choose anything: the result is bit for bit the same
without it.

**Non-finite values.** If an image's loss, iterate or gradient becomes NaN/Inf, that image's run
stops there (a warning names it, ``trace["nonfinite_iteration"]``) and its output is what the method
would return had its budget ended at its last finite iterate: that iterate, or the ES-WMV pick when
early stopping is on and has made a check.

Trace (``Result.trace``): ``"loss"``, ``"variance"`` (ES-WMV VAR; NaN before the window is full or
without early stopping) and, with a truth, ``"psnr"``: (iterations, B) float64 tensors, NaN after
the image's run ended; ``"picked_iteration"`` (the iteration the output comes from),
``"stop_iteration"`` (-1: budget reached), ``"nonfinite_iteration"`` (-1: none),
``"iterations_run"`` (iterations computed for the image) (B,) tensors;
``"iterations"`` (budget), ``"timesteps"``, ``"backward_nfe"``; blind: the estimates at the output
iteration, ``"kernel"`` (B, k, k), ``"theta"`` or ``"z"`` (B,).

**Choosing W and P on one run.** ES-WMV only reads the iterates, and stopping only truncates the
run (the iterates before a stop do not depend on it), so what any (W, P) would pick and where it
would stop can be read off a single run: ``wmv_candidates=[(W, P), ...]`` watches the iterates
with each of those rules (within the run's own budget and stop) and adds
``"wmv_W_P_picked_iteration"``, ``"_stop_iteration"``, ``"_iterations_run"`` and, with a truth,
``"_psnr"`` (B,) entries to the trace, equal to what a run with ``early_stop="wmv"``, that W and P
would report (``tests/test_dmplug.py``). The output never depends on them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.seeding import randn
from diffinv.solvers._blind import BLIND_FAMILIES, BLIND_OPTION_NEEDS
from diffinv.solvers._unknowns import OperatorUnknowns, blind_unknowns
from diffinv.solvers.base import Result, Solver, register_solver
from diffinv.solvers.early_stopping import (
    DEFAULT_PATIENCE,
    DEFAULT_WINDOW,
    WMVEarlyStopping,
    check_window_patience,
    stack_columns,
)

OPTIMIZERS = ("adam", "lbfgs")
LOSSES = ("mse", "l1")
EARLY_STOPS = ("none", "wmv")


# ---------------------------------------------------------------------------------- the generator
def _ddim_step(prior: Any, x: Tensor, t: int, t_prev: int, clip: bool) -> Tensor:
    x0 = prior.x0(x, t, clip=clip)
    return prior.ddim_update(x, t, t_prev, x0)


def reverse_process(prior: Any, z: Tensor, timesteps: Sequence[int], *, clip: bool = True,
                    checkpoint: bool = False) -> Tensor:
    """``R(z)``: deterministic DDIM (eta = 0) over ``timesteps`` (decreasing), then clamp.

    ``clip``: clamp each Tweedie estimate to [-1, 1] (``clip_sample=True`` of the official
    scheduler). ``checkpoint``: recompute each step in the backward pass instead of storing its
    activations.
    """
    ts = [int(t) for t in timesteps]
    if not ts or any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise DiffinvError(f"timesteps must be a non-empty decreasing sequence, got {ts}")
    x = z
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        if checkpoint and torch.is_grad_enabled():
            x = _checkpoint(_ddim_step, prior, x, t, t_prev, clip, use_reentrant=False)
        else:
            x = _ddim_step(prior, x, t, t_prev, clip)
    return x.clamp(-1, 1)


# ---------------------------------------------------------------------------------- bookkeeping
class _Recorder:
    """Per-iteration logs, non-finite handling, ES-WMV and the output candidates of a batch."""

    def __init__(self, batch: int, es: WMVEarlyStopping | None, truth: Tensor | None,
                 callback: Callable[[int, Tensor], None] | None,
                 candidates: Sequence[tuple[int, int]] = ()):
        self.B, self.es, self.truth, self.callback = batch, es, truth, callback
        #: other (W, P) rules watching the same iterates; they never change the run or its output
        self.candidates = {(w, p): WMVEarlyStopping(w, p) for w, p in candidates}
        #: per rule, the iteration each image's output would come from, had the run ended here
        self.candidate_picks: dict[tuple[int, int], list[Tensor]] = {r: [] for r in self.candidates}
        self.active = torch.ones(batch, dtype=torch.bool)  # not failed
        #: iterations computed for each image (up to its stop, failure or the budget)
        self.ran = torch.zeros(batch, dtype=torch.long)
        self.nonfinite_iteration = torch.full((batch,), -1, dtype=torch.long)
        self.last_iteration = torch.full((batch,), -1, dtype=torch.long)
        self.loss: list[Tensor] = []
        self.var: list[Tensor] = []
        self.psnr: list[Tensor] = []
        self.last_x: Tensor | None = None
        self.last_est: dict[str, Tensor] = {}
        self.pick_est: dict[str, Tensor] = {}
        self.it = 0

    @property
    def running(self) -> Tensor:
        """(B,) bool: images still iterated: neither failed nor (with early stopping) stopped.
        An image's run ends there: nothing of it is computed or logged afterwards, so its
        columns (loss, PSNR, oracle, iterations run) do not depend on the rest of the batch."""
        run = self.active.clone()
        if self.es is not None and self.es.started:
            run &= ~self.es.stopped
        return run

    @property
    def done(self) -> bool:
        """Every image has failed or (with early stopping) stopped."""
        return not bool(self.running.any())

    def record(self, x: Tensor, per_loss: Tensor, grad_ok: Tensor,
               est: dict[str, Tensor]) -> None:
        """Log iteration ``self.it`` of the running images (their iterate ``x``, loss, gradient
        finiteness; the entries of the other images are ignored)."""
        x = x.detach()
        per_loss = per_loss.detach()
        it = self.it
        run = self.running
        x_ok = torch.isfinite(x).flatten(1).all(1).cpu()
        ok = run & x_ok & torch.isfinite(per_loss).cpu()  # a finite iterate
        failed = run & ~(ok & grad_ok.cpu())
        if failed.any():
            self.nonfinite_iteration[failed] = it
            warnings.warn(f"DMPlug: non-finite loss, iterate or gradient at iteration {it} for "
                          f"image(s) {failed.nonzero().flatten().tolist()}; their run stops with "
                          "the last finite iterate", RuntimeWarning, stacklevel=4)
        self.loss.append(torch.where(run.to(per_loss.device), per_loss,
                                     torch.full_like(per_loss, float("nan"))))
        if self.last_x is None:
            self.last_x = torch.full_like(x, float("nan"))
        m = ok.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        self.last_x = torch.where(m, x, self.last_x)
        self.last_iteration[ok] = it
        for k, v in est.items():
            v = v.detach()
            old = self.last_est.get(k, torch.full_like(v, float("nan")))
            self.last_est[k] = torch.where(ok.to(v.device).reshape(-1, *([1] * (v.ndim - 1))),
                                           v, old)
        if self.es is not None:
            self.var.append(self.es.update(torch.where(m, x, torch.zeros_like(x)), it,
                                           active=ok))
            now = self.es.picked_now
            for k, v in est.items():
                v = v.detach()
                old = self.pick_est.get(k, torch.full_like(v, float("nan")))
                self.pick_est[k] = torch.where(now.to(v.device).reshape(-1, *([1] * (v.ndim - 1))),
                                               v, old)
        else:
            self.var.append(torch.full((self.B,), float("nan"), dtype=torch.float64))
        for key, rule in self.candidates.items():
            rule.update(torch.where(m, x, torch.zeros_like(x)), it, active=ok)
            if self.truth is not None:  # only read with a PSNR log (candidate_columns)
                pick = torch.where(rule.best_iteration >= 0, rule.best_iteration,
                                   self.last_iteration)
                self.candidate_picks[key].append(torch.where(run, pick, torch.full_like(pick, -1)))
        if self.truth is not None:
            from diffinv.metrics.psnr import psnr

            p = psnr(x.nan_to_num(0.0), self.truth).double().cpu()
            self.psnr.append(torch.where(ok, p, torch.full_like(p, float("nan"))))
        if self.callback is not None:
            self.callback(it, x)
        self.active = self.active & ~failed
        self.ran += run.long()
        self.it += 1

    def output(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(x, the iteration each image's x comes from, the estimates at that iteration)."""
        if self.last_x is None or (self.last_iteration < 0).any():
            bad = (self.last_iteration < 0).nonzero().flatten().tolist()
            raise NonFiniteError(f"DMPlug: image(s) {bad or list(range(self.B))} never had a "
                                 "finite iterate (the loss was NaN/Inf from the first iteration)")
        x, src, est = self.last_x, self.last_iteration.clone(), dict(self.last_est)
        if self.es is not None:
            x = self.es.pick(x)
            checked = self.es.checked
            src = torch.where(checked, self.es.best_iteration, src)
            for k, v in est.items():
                c = checked.to(v.device).reshape(-1, *([1] * (v.ndim - 1)))
                est[k] = torch.where(c, self.pick_est[k], v)
        return x, src, est

    def columns(self) -> dict[str, Tensor]:
        cols = {"loss": stack_columns(self.loss, self.B),
                "variance": stack_columns(self.var, self.B)}
        if self.truth is not None:
            cols["psnr"] = stack_columns(self.psnr, self.B)
        return cols

    def candidate_columns(self) -> dict[str, Tensor]:
        """Per candidate rule (W, P): ``wmv_W_P_picked_iteration`` (-1: no check yet),
        ``wmv_W_P_stop_iteration`` (-1: not stopped within the run), ``wmv_W_P_iterations_run``
        (what the rule alone would have cost) and, with a truth, ``wmv_W_P_psnr`` (the PSNR of
        its pick; of the last finite iterate when it made no check) and ``wmv_W_P_pick_psnr``,
        (iterations, B): row ``t`` is the PSNR of what the rule would return had the budget been
        ``t + 1`` iterations (NaN after the image's run ended), so a study reads the rule under
        any smaller budget off one run (``"trace:wmv_W_P_pick_psnr@1999"``)."""
        cols: dict[str, Tensor] = {}
        psnr = stack_columns(self.psnr, self.B) if self.truth is not None else None
        for (w, p), rule in self.candidates.items():
            key = f"wmv_{w}_{p}"
            if rule.started:
                picked, stop = rule.best_iteration.clone(), rule.stop_iteration.clone()
            else:
                picked = stop = torch.full((self.B,), -1, dtype=torch.long)
            cols[f"{key}_picked_iteration"] = picked
            cols[f"{key}_stop_iteration"] = stop
            cols[f"{key}_iterations_run"] = torch.where(stop >= 0, stop + 1, self.ran)
            if psnr is not None:
                src = torch.where(picked >= 0, picked, self.last_iteration)
                cols[f"{key}_psnr"] = psnr[src.clamp(min=0), torch.arange(self.B)]
                picks = self.candidate_picks[(w, p)]  # one row per PSNR row
                at = torch.stack(picks) if picks else torch.zeros((0, self.B), dtype=torch.long)
                got = psnr.gather(0, at.clamp(min=0))
                cols[f"{key}_pick_psnr"] = torch.where(at >= 0, got, torch.full_like(got, float("nan")))
        return cols


def _scatter(batch: int, index: Tensor, x: Tensor, per: Tensor, est: dict[str, Tensor]
             ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The batch-sized (x, per-image loss, estimates) of a subset's objective: NaN for the images
    outside ``index`` (the recorder ignores them; the loss keeps its graph for the gradient)."""
    def full(v: Tensor) -> Tensor:
        out = torch.full((batch, *v.shape[1:]), float("nan"), dtype=v.dtype, device=v.device)
        return out.index_copy(0, index, v)

    return full(x.detach()), full(per), {k: full(v.detach()) for k, v in est.items()}


def _stop_iterations(rec: _Recorder) -> Tensor:
    if rec.es is None or not rec.es.started:
        return torch.full((rec.B,), -1, dtype=torch.long)
    return rec.es.stop_iteration.clone()


# ---------------------------------------------------------------------------------- the solver
def _positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"{name} must be a number, got {value!r}") from e
    if not math.isfinite(v) or v <= 0:
        raise DiffinvError(f"{name} must be finite and > 0, got {value!r}")
    return v


def _count(value: int, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or int(value) < low:
        raise DiffinvError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@register_solver("dmplug")
class DMPlug(Solver):
    """DMPlug: ``min_z loss(y, A(R(z)))`` with an S-step DDIM generator ``R`` (module docstring).

    Parameters: ``iterations`` (Adam steps, or L-BFGS outer steps), ``steps`` (S), ``optimizer``
    ("adam" | "lbfgs"), ``lr``, ``lbfgs_max_iter``, ``loss`` ("mse" | "l1"), ``early_stop``
    ("none" | "wmv") with ``window`` (W) and ``patience`` (P), ``checkpoint``, ``blind`` (None:
    follow the operator; True/False: insist), ``kernel_lr``, ``param_lr``, ``kernel_size``,
    ``wmv_candidates`` (extra (W, P) ES-WMV rules watched on the same run, for choosing W and P).
    """
    estimates_kernel = True  # trace["kernel"]; takes the discrepancy option (blind runs)

    summary = "DMPlug: gradient descent on the seed of a 3-step DDIM generator (+ES-WMV, blind)"
    requires = ()
    needs = BLIND_OPTION_NEEDS
    #: show a progress bar (set by the command line)
    progress: bool = False

    def __init__(self, iterations: int = 5000, steps: int = 3, *, optimizer: str = "adam",
                 lr: float | None = None, lbfgs_max_iter: int = 20, loss: str = "mse",
                 early_stop: str | None = "none", window: int = DEFAULT_WINDOW,
                 patience: int = DEFAULT_PATIENCE, checkpoint: bool = False,
                 blind: bool | None = None, kernel_lr: float = 1e-1, param_lr: float = 1e-1,
                 kernel_size: int | None = None, spacing: str = "leading", clip: bool = True,
                 wmv_candidates: Sequence[Sequence[int]] = ()):
        self.iterations = _count(iterations, "iterations")
        self.steps = _count(steps, "number of DDIM steps S")
        if optimizer not in OPTIMIZERS:
            raise UnknownNameError("DMPlug optimizer", optimizer, OPTIMIZERS)
        self.optimizer = optimizer
        self.lr = _positive((1e-2 if optimizer == "adam" else 1e-1) if lr is None else lr,
                            "learning rate lr")
        self.lbfgs_max_iter = _count(lbfgs_max_iter, "lbfgs_max_iter")
        if loss not in LOSSES:
            raise UnknownNameError("DMPlug loss", loss, LOSSES)
        self.loss = loss
        early_stop = "none" if early_stop is None else early_stop
        if early_stop not in EARLY_STOPS:
            raise UnknownNameError("early-stopping rule", early_stop, EARLY_STOPS)
        self.early_stop = early_stop
        self.window, self.patience = check_window_patience(window, patience)
        self.checkpoint = bool(checkpoint)
        self.blind = blind
        self.kernel_lr = _positive(kernel_lr, "kernel learning rate kernel_lr")
        self.param_lr = _positive(param_lr, "parameter learning rate param_lr")
        if kernel_size is not None:
            _count(kernel_size, "kernel_size")
        self.kernel_size = kernel_size
        self.spacing = spacing
        self.clip = bool(clip)
        try:
            pairs = [tuple(c) for c in wmv_candidates]
        except TypeError as e:
            raise DiffinvError(f"wmv_candidates must be a list of (W, P) pairs, got "
                               f"{wmv_candidates!r}") from e
        if any(len(c) != 2 for c in pairs):
            raise DiffinvError(f"wmv_candidates must be a list of (W, P) pairs, got "
                               f"{wmv_candidates!r}")
        self.wmv_candidates = list(dict.fromkeys(check_window_patience(w, p) for w, p in pairs))
        if optimizer == "lbfgs" and blind:
            raise DiffinvError("blind DMPlug uses Adam (the kernel has its own learning rate; "
                               "torch's L-BFGS takes one parameter group)")

    # ------------------------------------------------------------------ public call
    def __call__(self, y: Tensor, physics: Any, prior: Any, seed: int | Sequence = 0, *,
                 truth: Tensor | None = None,
                 callback: Callable[[int, Tensor], None] | None = None) -> Result:
        """Solve; ``truth`` (B, C, H, W) is used for evaluation only (PSNR trace, oracle peak)."""
        self._evaluation = (truth, callback)
        try:
            return super().__call__(y, physics, prior, seed)
        finally:
            self._evaluation = (None, None)

    def timesteps(self, prior: Any) -> list[int] | list[float]:
        """The grid of ``R``: DDIM timesteps, or the flow times of a prior with a ``seed_map``."""
        if callable(getattr(prior, "seed_map", None)):
            return prior.seed_times(self.steps)
        T = prior.num_timesteps
        if self.steps > T:
            raise DiffinvError(f"S = {self.steps} DDIM steps exceed the prior's {T} timesteps")
        return spaced_timesteps(T, self.steps, self.spacing)

    def generate(self, prior: Any, z: Tensor) -> Tensor:
        """``R(z)`` with this solver's settings: the prior's own deterministic map seed -> image
        when it has one (a flow prior: ``S`` Euler steps from its source), else S DDIM steps."""
        if callable(getattr(prior, "seed_map", None)):
            return prior.seed_map(z, self.steps, clip=self.clip, checkpoint=self.checkpoint)
        return reverse_process(prior, z, self.timesteps(prior), clip=self.clip,
                               checkpoint=self.checkpoint)

    def _per_image_loss(self, ax: Tensor, y: Tensor) -> Tensor:
        d = (ax - y).flatten(1)
        return d.square().mean(1) if self.loss == "mse" else d.abs().mean(1)

    # ------------------------------------------------------------------ solve
    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        truth, callback = getattr(self, "_evaluation", (None, None))
        op = physics.make_operator().to(y.device)
        self.check_operator(op)
        op_blind = bool(getattr(op, "blind", False))
        blind = op_blind if self.blind is None else bool(self.blind)
        if blind != op_blind:
            raise DiffinvError(
                f"operator {type(op).__name__} is {'blind' if op_blind else 'not blind'}: "
                + ("use blind DMPlug (blind=True, --blind) to estimate its parameters" if op_blind
                   else f"blind DMPlug needs a blind family ({', '.join(BLIND_FAMILIES)})"))
        B = y.shape[0]
        image_shape = tuple(prior.image_shape)
        if truth is not None:
            truth = truth.to(device=y.device, dtype=y.dtype)
            if tuple(truth.shape) != (B, *image_shape):
                raise ShapeError(f"truth of shape {tuple(truth.shape)} does not match the "
                                 f"batch {(B, *image_shape)}")
        if not torch.isfinite(y).all():
            raise NonFiniteError("the measurement y contains NaN/Inf")
        ts = self.timesteps(prior)
        z = randn(image_shape, generators, device=y.device, dtype=y.dtype)
        if blind:
            unknowns = blind_unknowns(op, generators, image_shape, self.kernel_size,
                                       self.kernel_lr, self.param_lr, y.device, y.dtype)
        else:
            if self.kernel_size is not None:
                raise DiffinvError("kernel_size applies to blind DMPlug only")
            params = {k: v.to(y.device) for k, v in getattr(physics, "params", {}).items()}
            unknowns = OperatorUnknowns(apply=lambda x, est, fixed: op(x, **fixed), fixed=params)
        was_training = prior.network.training
        prior.network.eval()
        try:
            if self.optimizer == "adam":
                x, trace = self._solve_adam(y, op, prior, z, unknowns, truth, callback)
            else:
                x, trace = self._solve_lbfgs(y, op, prior, z, unknowns, truth, callback)
        finally:
            prior.network.train(was_training)
        trace.update(iterations=self.iterations, timesteps=ts, optimizer=self.optimizer,
                     early_stop=self.early_stop, checkpoint=self.checkpoint)
        if self.early_stop == "wmv":
            trace.update(window=self.window, patience=self.patience)
        if truth is not None and len(trace["psnr"]):
            peak = trace["psnr"].nan_to_num(float("-inf"))
            trace["oracle_psnr"] = peak.max(0).values
            trace["oracle_iteration"] = peak.argmax(0)
        return x, trace

    def _objective(self, y: Tensor, prior: Any, z: Tensor,
                   unknowns: OperatorUnknowns) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(R(z), per-image loss, estimates); images with a non-finite iterate get a NaN loss."""
        x = self.generate(prior, z)
        est = unknowns.estimates()
        ok = torch.isfinite(x).flatten(1).all(1)
        xs = x if bool(ok.all()) else torch.where(ok.reshape(-1, 1, 1, 1), x,
                                                    torch.zeros_like(x))
        per = self._per_image_loss(unknowns.forward(xs, est), y)
        per = torch.where(ok, per, torch.full_like(per, float("nan")))
        return x, per, est

    def _grads(self, per: Tensor, leaves: list[Tensor], use: Tensor) -> tuple[list[Tensor], Tensor]:
        """Gradients of ``sum_{i in use} loss_i``; (grads with failed images zeroed, grad ok)."""
        use_d = use.to(per.device)
        total = per[use_d].sum()
        if not bool(use.any()):
            return [torch.zeros_like(t) for t in leaves], torch.zeros_like(use)
        grads = list(torch.autograd.grad(total, leaves))
        ok = torch.ones_like(use)
        for g in grads:
            ok &= torch.isfinite(g).flatten(1).all(1).cpu() if g.ndim > 1 else \
                torch.isfinite(g).cpu()
        keep = (use & ok).to(per.device)
        grads = [torch.where(keep.reshape(-1, *([1] * (g.ndim - 1))), g, torch.zeros_like(g))
                 for g in grads]
        return grads, ok

    def _new_es(self) -> WMVEarlyStopping | None:
        return WMVEarlyStopping(self.window, self.patience) if self.early_stop == "wmv" else None

    def _solve_adam(self, y, op, prior, z0, unknowns, truth, callback):
        B = y.shape[0]
        z = z0.clone().requires_grad_()
        leaves = [z, *unknowns.leaves.values()]
        groups = [{"params": [z], "lr": self.lr}]
        groups += [{"params": [t], "lr": unknowns.lrs[k]} for k, t in unknowns.leaves.items()]
        opt = torch.optim.Adam(groups)
        rec = _Recorder(B, self._new_es(), truth, callback, self.wmv_candidates)
        n_grad = 0
        from tqdm.auto import tqdm

        for _ in tqdm(range(self.iterations), disable=not self.progress, desc="dmplug"):
            run = rec.running
            if bool(run.all()):
                x, per, est = self._objective(y, prior, z, unknowns)
            else:  # only the running images go through R: stopped ones cost nothing more
                idx = run.nonzero().flatten().to(y.device)
                x, per, est = _scatter(B, idx, *self._objective(y[idx], prior, z[idx],
                                                                unknowns.subset(idx, op)))
            use = run & torch.isfinite(per.detach()).cpu()
            grads, grad_ok = self._grads(per, leaves, use)
            n_grad += 1
            rec.record(x, per, grad_ok | ~use, est)
            if rec.done:
                break
            for t, g in zip(leaves, grads, strict=True):
                t.grad = g
            opt.step()
        x, src, est = rec.output()
        trace: dict[str, Any] = rec.columns()
        trace.update(rec.candidate_columns())
        trace.update(picked_iteration=src, stop_iteration=_stop_iterations(rec),
                     nonfinite_iteration=rec.nonfinite_iteration.clone(),
                     iterations_run=rec.ran.clone(), backward_nfe=n_grad * self.steps, **est)
        return x, trace

    def _solve_lbfgs(self, y, op, prior, z0, unknowns, truth, callback):
        B = y.shape[0]
        outs, traces = [], []
        total_grads = 0
        for i in range(B):
            z = z0[i:i + 1].clone().requires_grad_()
            opt = torch.optim.LBFGS([z], lr=self.lr, max_iter=self.lbfgs_max_iter)
            rec = _Recorder(1, self._new_es(), None if truth is None else truth[i:i + 1],
                            None if callback is None else
                            (lambda it, x, _i=i: callback(it, x)), self.wmv_candidates)
            yi = y[i:i + 1]
            counter = [0]
            mine = unknowns.select(i, op)

            def closure(z=z, yi=yi, rec=rec, counter=counter, mine=mine) -> Tensor:
                if rec.done:  # no more evaluations for a finished image: zero gradient ends it
                    z.grad = torch.zeros_like(z)
                    return torch.zeros(())
                x, per, est = self._objective(yi, prior, z, mine)
                use = rec.running & torch.isfinite(per.detach()).cpu()
                (g,), grad_ok = self._grads(per, [z], use)
                counter[0] += 1
                rec.record(x, per, grad_ok | ~use, est)
                # a finished image (failed or stopped) ends L-BFGS's inner loop: zero gradient
                z.grad = torch.zeros_like(g) if rec.done else g
                return per.detach().nan_to_num(0.0).sum()

            for _ in range(self.iterations):
                opt.step(closure)
                if rec.done:
                    break
            total_grads += counter[0]
            x, src, _ = rec.output()
            outs.append(x)
            t = rec.columns()
            t.update(rec.candidate_columns())
            t.update(picked_iteration=src, stop_iteration=_stop_iterations(rec),
                     nonfinite_iteration=rec.nonfinite_iteration.clone(),
                     iterations_run=rec.ran.clone())
            traces.append(t)
        n = max(len(t["loss"]) for t in traces)
        trace: dict[str, Any] = {}
        for key in traces[0]:
            cols = [t[key] for t in traces]
            if cols[0].ndim == 2:
                cols = [torch.cat([c, torch.full((n - len(c), 1), float("nan"),
                                                 dtype=c.dtype)]) for c in cols]
            trace[key] = torch.cat(cols, dim=-1 if cols[0].ndim == 2 else 0)
        trace["backward_nfe"] = total_grads * self.steps
        return torch.cat(outs), trace
