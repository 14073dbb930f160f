r"""DMPlug for video: one MAP problem over the seeds of all frames of a clip, with temporal terms.

After Wang et al., "Temporal-Consistent Video Restoration with Pre-trained Diffusion Models"
(AAAI 2025, the DMPlug authors; reference/video-flow-latent.md A). No official code exists; what
is not published (loss weights, residual rank, warping schedule, EMA rate, flow estimator,
iterations) is our choice, named below. Our priors are pixel-space, so the paper's decoder ``D`` is
the identity.

**Generator.** ``R`` is DMPlug's few-step deterministic DDIM map (:func:`diffinv.solvers.dmplug.
reverse_process`: ``S = 3`` steps on 666, 333, 0, clamped Tweedie estimates; the same function,
imported, so per-frame results equal DMPlug's), applied to every frame: ``x_t = R(Z_t)``,
``t = 0 .. T - 1``, the frames of all clips of a batch in one network batch. ``checkpoint=True``
recomputes each DDIM step in the backward pass (DMPlug's option).

**Seeds (semantic consistency).** For clip ``b`` the seeds ``Z = (Z_0, ..., Z_{T-1})``,
``Z_t`` of the image shape ``(C, H, W)``, flattened to ``d = CHW``, are

* ``semantic=False`` ("Base"): free per-frame seeds ``Z_t = z_t``, ``z_t ~ N(0, I)``;
* ``semantic=True``, ``rank=None``: ``Z = z_s 1^T + E``, one shared seed ``z_s ~ N(0, I)`` plus
  per-frame residuals ``E = (e_0, ..., e_{T-1})`` initialised to 0 (every frame starts from the
  shared seed, so from the same image);
* ``semantic=True``, ``rank=r``: ``E = U V^T`` with ``U`` (``d x r``, initialised to 0) and
  ``V`` (``T x r``, ``r <= T``, initialised to orthonormal columns: the Q factor of a seeded
  Gaussian ``T x r`` matrix), so ``rank(E) <= r`` at every iteration; the parameters are
  ``d (r + 1) + T r`` numbers per clip instead of ``d (T + 1)`` (the paper's "low rank to save
  memory"). ``U`` starts at 0 so that ``Z`` starts at the shared seed, as with full residuals;
  ``V`` starts non-zero, else the gradient of ``U`` would vanish (LoRA's initialisation).

**Objective** (per clip; the batch descends the sum of its clips' objectives):

.. math::

    J(Z) = \sum_{s} \ell\big(y_s, A(R(Z))_s\big)
         + \lambda \sum_{t=0}^{T-2} P_t, \qquad
    P_t = \frac{\sum_{p} M_t(p) \lVert x_t(p) - x_{t+1}(p + f_t(p)) \rVert^2}{C \sum_p M_t(p)}

(``P_t = 0`` where ``M_t`` is empty). ``\ell`` is DMPlug's per-image loss (mean squared error, or
mean absolute error with ``loss="l1"``) of frame ``s`` of the measurement: the data term is what
DMPlug minimises for the frames one by one. ``P_t`` is the masked mean squared difference between
frame ``t`` and frame ``t + 1`` warped back onto it (bilinear backward warp,
:func:`diffinv.video.flow.warp_backward`) on the [-1, 1] scale: four times the warping error of
Lai et al. for that pair when ``f`` is the reference flow. ``\lambda`` (``pixel_weight``) weighs one
pair like one frame of data; ``pixel=False`` drops the term. Gradients reach both frames of a pair;
the flow and mask are constants.

**Flow (pixel consistency, progressive warping).** From iteration ``pixel_start`` on, every
``flow_every`` (``K``) iterations the flow is re-estimated from the current estimate of the clip,
detached (:func:`diffinv.video.flow.estimate_flow`: OpenCV DIS on the 4x-upsampled frames), in
both directions (forward ``f_t``, anchored at frame ``t``, and backward ``g_t``, anchored at frame
``t + 1``, from the time-reversed clip), smoothed by an exponential moving average,
``f <- beta f + (1 - beta) f_new`` (``beta = flow_ema``; the first estimate initialises it),
likewise ``g``, and the mask is the forward-backward check on the smoothed flows
(:func:`diffinv.video.flow.fb_consistent`: in frame and ``|f + g(p + f)|^2 <= 0.01 (|f|^2 +
|g(p + f)|^2) + 0.5``). Before ``pixel_start`` the pixel term is off. The term is computed with
the flow of the current iteration's update, from the same forward pass (no extra network call).

**Optimisation.** Adam (lr 1e-2, DMPlug's default) on all seed parameters, ``iterations``
steps; each clip's parameters get gradients from its own objective only and Adam is elementwise,
so a batch of clips gives its clips' results one by one (up to the rounding of batched network
calls). **Early stopping** (``early_stop="wmv"``): ES-WMV (:mod:`diffinv.solvers.early_stopping`)
on the whole clip (the window variance over all ``T C H W`` values of the iterates), per clip; the
output is the iterate ES-WMV picks, and a stopped clip is no longer computed. Without it the last
iterate. A clip whose objective, iterate or gradient turns NaN/Inf stops there with a warning and
returns its last finite iterate (or ES-WMV's pick).

**Randomness.** Clip ``b`` of the batch uses generator ``image_seed(seed, b)`` (or the ``b``-th
of the generators given); from it, in this order: ``T`` frame generators
(:func:`diffinv.video.operators.frame_generators`, one 62-bit seed drawn per frame), then, with
``semantic=True``, ``z_s`` and, with a rank, ``V``. Frame ``t``'s seed ``z_t`` (Base) is drawn
from frame generator ``t`` exactly as DMPlug draws an image's seed from its generator, so Base
with ``seed=s`` equals DMPlug run on the ``T`` frames with ``seed=frame_generators(g_b, T)``
(tests/test_video_dmplug.py).

**Deviations from the paper** (not public, or not reproducible here): pixel-space prior (no
decoder); ``S = 3`` DDIM steps as our DMPlug (the paper uses 4); a classical flow estimator
(OpenCV DIS) instead of RAFT; no "mean-value theorem reformulation" (not described publicly); the
loss weights, rank, flow schedule (``K``, ``pixel_start``) and EMA rate are ours and must be chosen
on validation clips (benchmarks/tools/video_dmplug_pilot.py), never on test clips; the residual
initialisation (zero) and the low-rank factorisation ``U V^T`` are our reading of
"Z = z_shared 1^T + residuals, low rank".

Trace (``Result.trace``): per iteration ``(iterations, B)`` float64 ``"loss"`` (``J``),
``"data"``, ``"pixel_term"`` (``sum_t P_t``, NaN while off), ``"variance"`` (ES-WMV) and, with a truth
(evaluation only), ``"psnr"`` (mean over frames of the per-frame PSNR); ``(B,)``
``"picked_iteration"``, ``"stop_iteration"``, ``"nonfinite_iteration"``, ``"iterations_run"``,
``"flow_updates"``; ``"flow"`` ``(B, T - 1, 2, H, W)`` and ``"valid"`` ``(B, T - 1, 1, H, W)``:
the smoothed flow and mask at the end (NaN flow where never estimated); with a truth
``"oracle_psnr"`` and ``"oracle_iteration"``; settings.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.solvers.base import Result
from diffinv.solvers.dmplug import reverse_process
from diffinv.solvers.early_stopping import (
    DEFAULT_PATIENCE,
    DEFAULT_WINDOW,
    WMVEarlyStopping,
    check_window_patience,
    stack_columns,
)
from diffinv.video.clips import check_clip
from diffinv.video.flow import FLOW_METHODS, estimate_flow, fb_consistent, warp_backward
from diffinv.video.operators import ClipOperator, frame_generators

LOSSES = ("mse", "l1")
EARLY_STOPS = ("none", "wmv")


# ------------------------------------------------------------------ the pixel term
def pixel_consistency(x: Tensor, flow: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""``sum_t P_t`` per clip (module docstring): the masked mean squared difference between
    frame ``t`` and frame ``t + 1`` warped back along ``flow[t]``, summed over the pairs.

    ``x`` ``(B, T, C, H, W)``, ``flow`` ``(B, T - 1, 2, H, W)``, ``valid`` ``(B, T - 1, 1, H, W)``
    (weights in [0, 1]; default all ones) -> ``(B,)``; differentiable in ``x`` (not in the flow).
    """
    if x.ndim != 5:
        raise ShapeError(f"x must be a batch of clips (B, T, C, H, W), got {tuple(x.shape)}")
    B, T, C, H, W = x.shape
    if tuple(flow.shape) != (B, T - 1, 2, H, W):
        raise ShapeError(f"flow of shape {tuple(flow.shape)} does not fit clips "
                         f"{tuple(x.shape)}: expected {(B, T - 1, 2, H, W)}")
    m = torch.ones(B, T - 1, 1, H, W, dtype=x.dtype, device=x.device) if valid is None else valid
    if tuple(m.shape) != (B, T - 1, 1, H, W):
        raise ShapeError(f"valid of shape {tuple(m.shape)} does not fit clips {tuple(x.shape)}")
    n = B * (T - 1)
    warped = warp_backward(x[:, 1:].reshape(n, C, H, W),
                           flow.detach().reshape(n, 2, H, W).to(x.dtype))
    m = m.detach().reshape(n, 1, H, W).to(x.dtype)
    sq = (warped - x[:, :-1].reshape(n, C, H, W)).square() * m
    cnt = m.sum(dim=(1, 2, 3)) * C
    per_pair = torch.where(cnt > 0, sq.sum(dim=(1, 2, 3)) / cnt.clamp(min=1e-12),
                           torch.zeros_like(cnt))
    return per_pair.reshape(B, T - 1).sum(1)


class FlowTracker:
    """The smoothed forward/backward flows of a batch of clips and their forward-backward mask.

    :meth:`update` re-estimates both directions for the clips ``index`` from their (detached)
    current estimates and folds them into the EMA; :meth:`get` returns ``(flow, valid)``.
    """

    def __init__(self, batch: int, frames: int, size: tuple[int, int], *, decay: float,
                 method: str = "dis", upsample: int = 4, dtype=torch.float32, device="cpu"):
        H, W = size
        self.decay, self.method, self.upsample = float(decay), method, int(upsample)
        self.fw = torch.zeros(batch, frames - 1, 2, H, W, dtype=dtype, device=device)
        self.bw = torch.zeros_like(self.fw)
        self.valid = torch.zeros(batch, frames - 1, 1, H, W, dtype=dtype, device=device)
        self.updates = torch.zeros(batch, dtype=torch.long)

    def update(self, x: Tensor, index: Tensor) -> None:
        """``x`` ``(len(index), T, C, H, W)``: the current estimates of clips ``index``."""
        x = x.detach()
        fw, _ = estimate_flow(x, self.method, upsample=self.upsample)
        bw_rev, _ = estimate_flow(x.flip(1), self.method, upsample=self.upsample)
        bw = bw_rev.flip(1)  # pair t of the reversed clip is anchored at frame T - 1 - t
        idx = index.to(self.fw.device)
        fresh = (self.updates[index.cpu()] == 0).to(self.fw.device).reshape(-1, 1, 1, 1, 1)
        beta = self.decay
        fw = fw.to(self.fw)
        bw = bw.to(self.bw)
        new_fw = torch.where(fresh, fw, beta * self.fw[idx] + (1 - beta) * fw)
        new_bw = torch.where(fresh, bw, beta * self.bw[idx] + (1 - beta) * bw)
        self.fw[idx], self.bw[idx] = new_fw, new_bw
        b, T1 = new_fw.shape[:2]
        v = fb_consistent(new_fw.reshape(b * T1, *new_fw.shape[2:]),
                          new_bw.reshape(b * T1, *new_bw.shape[2:]))
        self.valid[idx] = v.reshape(b, T1, *v.shape[1:])
        self.updates[index.cpu()] += 1

    def get(self, index: Tensor) -> tuple[Tensor, Tensor]:
        idx = index.to(self.fw.device)
        return self.fw[idx], self.valid[idx]


# ------------------------------------------------------------------ the seeds
class ClipSeeds:
    """The seed parametrisation of a batch of clips (module docstring): ``leaves`` (the tensors
    Adam optimises) and :meth:`seeds` ``(B, T, C, H, W)``."""

    def __init__(self, generators: Sequence[torch.Generator], frames: int,
                 image_shape: Sequence[int], *, semantic: bool, rank: int | None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = tuple(int(s) for s in image_shape)
        T = int(frames)
        self.semantic, self.rank, self.frames, self.image_shape = semantic, rank, T, shape
        z, shared, coef = [], [], []
        for g in generators:
            fg = frame_generators(g, T)
            # each frame's seed is drawn as DMPlug draws an image's (diffinv.seeding.randn)
            z.append(torch.stack([torch.randn(shape, generator=f, dtype=torch.float32)
                                  for f in fg]))
            if semantic:
                shared.append(torch.randn(shape, generator=g, dtype=torch.float32))
                if rank is not None:
                    a = torch.randn(T, rank, generator=g, dtype=torch.float64)
                    coef.append(torch.linalg.qr(a).Q.to(torch.float32))

        def leaf(t: list[Tensor]) -> Tensor:
            return torch.stack(t).to(device=device, dtype=dtype).requires_grad_()

        B = len(z)
        if not semantic:
            self.leaves = {"z": leaf(z)}
        elif rank is None:
            self.leaves = {"shared": leaf(shared),
                           "residual": torch.zeros(B, T, *shape, device=device, dtype=dtype,
                                                   requires_grad=True)}
        else:
            self.leaves = {"shared": leaf(shared),
                           "basis": torch.zeros(B, rank, *shape, device=device, dtype=dtype,
                                                requires_grad=True),
                           "coef": leaf(coef)}

    def residuals(self, index: Tensor | None = None) -> Tensor:
        """The residuals ``E`` ``(b, T, C, H, W)`` (semantic only)."""
        lv = self.leaves if index is None else {k: v[index] for k, v in self.leaves.items()}
        if self.rank is None:
            return lv["residual"]
        return torch.einsum("btr,br...->bt...", lv["coef"], lv["basis"])

    def seeds(self, index: Tensor | None = None) -> Tensor:
        """``Z`` of the clips ``index`` (default all): ``(b, T, C, H, W)``."""
        if not self.semantic:
            z = self.leaves["z"]
            return z if index is None else z[index]
        shared = self.leaves["shared"] if index is None else self.leaves["shared"][index]
        return shared.unsqueeze(1) + self.residuals(index)


# ------------------------------------------------------------------ checks
def _positive(value: Any, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool):
        raise DiffinvError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"{name} must be a number, got {value!r}") from e
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise DiffinvError(f"{name} must be finite and {'>=' if zero else '>'} 0, got {value!r}")
    return v


def _count(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or int(value) < low:
        raise DiffinvError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise DiffinvError(f"{name} must be true or false, got {value!r}")
    return value


# ------------------------------------------------------------------ the solver
class DMPlugVideo:
    """DMPlug over the seeds of all frames of a clip (module docstring).

    Parameters: ``iterations``, ``steps`` (S), ``lr``, ``loss`` ("mse" | "l1"), ``semantic``
    (shared seed + residuals), ``rank`` (None: full residuals; r: rank-r residuals),
    ``pixel`` (the warping term), ``pixel_weight`` (lambda), ``flow_every`` (K), ``flow_ema``
    (beta in [0, 1)), ``pixel_start`` (first iteration of the pixel term), ``flow_method``,
    ``flow_upsample``, ``early_stop`` ("none" | "wmv") with ``window`` and ``patience``,
    ``checkpoint``, ``spacing``, ``clip``. The defaults of the temporal options (lambda 0.1, K 10,
    beta 0.9, start 50, full-rank residuals) are the settings of the validation pilot
    (benchmarks/video_dmplug_pilot.md), not yet chosen by a validation study; ``semantic=False,
    pixel=False`` is "Base".

    Call: ``solver(y, physics, prior, seed=0, *, params=None, truth=None, callback=None)`` with
    ``y`` a measured clip ``(T', ...)`` or clips ``(B, T', ...)``, ``physics`` a public
    :class:`~diffinv.video.measurement.ClipMeasurement` or a
    :class:`~diffinv.video.operators.ClipOperator` (then ``params``: its per-clip parameters),
    ``prior`` an image prior. Not in the image-solver registry (``make_solver``): it takes clips.
    """

    name = "dmplug-video"
    summary = ("DMPlug on clips: one seed problem over all frames, shared seed + residuals, "
               "flow-warping consistency (Wang et al. 2025)")
    #: show a progress bar
    progress: bool = False

    def __init__(self, iterations: int = 5000, steps: int = 3, *, lr: float = 1e-2,
                 loss: str = "mse", semantic: bool = True, rank: int | None = None,
                 pixel: bool = True, pixel_weight: float = 0.1, flow_every: int = 10,
                 flow_ema: float = 0.9, pixel_start: int = 50, flow_method: str = "dis",
                 flow_upsample: int = 4, early_stop: str | None = "none",
                 window: int = DEFAULT_WINDOW, patience: int = DEFAULT_PATIENCE,
                 checkpoint: bool = False, spacing: str = "leading", clip: bool = True):
        self.iterations = _count(iterations, "iterations")
        self.steps = _count(steps, "number of DDIM steps S")
        self.lr = _positive(lr, "learning rate lr")
        if loss not in LOSSES:
            raise UnknownNameError("loss", loss, LOSSES)
        self.loss = loss
        self.semantic = _flag(semantic, "semantic")
        if rank is not None:
            rank = _count(rank, "residual rank")
            if not self.semantic:
                raise DiffinvError("rank sets the rank of the residuals of the shared-seed "
                                   "parametrisation: it needs semantic=True")
        self.rank = rank
        self.pixel = _flag(pixel, "pixel")
        self.pixel_weight = _positive(pixel_weight, "pixel_weight (lambda)", zero=True)
        self.flow_every = _count(flow_every, "flow_every (K)")
        ema = _positive(flow_ema, "flow_ema", zero=True)
        if ema >= 1:
            raise DiffinvError(f"flow_ema must be in [0, 1) (1 would never update), got "
                               f"{flow_ema!r}")
        self.flow_ema = ema
        self.pixel_start = _count(pixel_start, "pixel_start", low=0)
        if flow_method not in FLOW_METHODS:
            raise UnknownNameError("flow method", flow_method, FLOW_METHODS)
        self.flow_method = flow_method
        self.flow_upsample = _count(flow_upsample, "flow_upsample")
        early_stop = "none" if early_stop is None else early_stop
        if early_stop not in EARLY_STOPS:
            raise UnknownNameError("early-stopping rule", early_stop, EARLY_STOPS)
        self.early_stop = early_stop
        self.window, self.patience = check_window_patience(window, patience)
        self.checkpoint = _flag(checkpoint, "checkpoint")
        self.spacing = spacing
        self.clip = _flag(clip, "clip")

    @property
    def variant(self) -> str:
        """"base", "semantic", "pixel" or "semantic+pixel" (the ablation rows of the paper)."""
        pix = self.pixel and self.pixel_weight > 0
        return {(False, False): "base", (True, False): "semantic", (False, True): "pixel",
                (True, True): "semantic+pixel"}[(self.semantic, pix)]

    def timesteps(self, prior: Any) -> list[int]:
        from diffinv.diffusion.schedule import spaced_timesteps

        T = prior.num_timesteps
        if self.steps > T:
            raise DiffinvError(f"S = {self.steps} DDIM steps exceed the prior's {T} timesteps")
        return spaced_timesteps(T, self.steps, self.spacing)

    # ------------------------------------------------------------------ input
    @staticmethod
    def _operator(physics: Any, params: dict[str, Tensor] | None
                  ) -> tuple[ClipOperator, dict[str, Tensor]]:
        from diffinv.video.measurement import ClipMeasurement

        if isinstance(physics, ClipMeasurement):
            if physics.has_truth:
                raise DiffinvError("the clip measurement given to the solver carries the hidden "
                                   "truth (the clean clip or its flow), which a solver must never "
                                   "see: pass measurement.public()")
            if params is not None:
                raise DiffinvError("params come with the clip measurement; give them only with "
                                   "a bare clip operator")
            return physics.make_operator(), dict(physics.params)
        if isinstance(physics, ClipOperator):
            return physics, dict(params or {})
        what = type(physics).__name__
        raise DiffinvError(f"dmplug-video needs a clip measurement (diffinv.video.measure_clip) "
                           f"or a clip operator (diffinv.video.make_clip_operator), got {what}"
                           + ("; an image operator applies to images: use "
                              "make_clip_operator('frames:<name>')" if hasattr(physics, "adjoint")
                              or hasattr(physics, "make_operator") else ""))

    # ------------------------------------------------------------------ solve
    def __call__(self, y: Tensor, physics: Any, prior: Any,
                 seed: int | Sequence[torch.Generator] = 0, *,
                 params: dict[str, Tensor] | None = None, truth: Tensor | None = None,
                 callback: Callable[[int, Tensor], None] | None = None) -> Result:
        """Solve; ``truth`` (clips of ``y``'s rank) is read for evaluation only (PSNR trace)."""
        import os

        from diffinv.checks import check_measurement_range
        from diffinv.seeding import batch_generators

        op, params = self._operator(physics, params)
        if isinstance(prior, str | os.PathLike) or not callable(getattr(prior, "reset_nfe", None)):
            raise DiffinvError(f"prior must be a DiffusionPrior, got {type(prior).__name__}; "
                               "load one first: diffinv.load_prior('fashion32')")
        check_clip(y, "y", min_frames=1)
        single = y.ndim == 4
        y5 = (y[None] if single else y).float()
        op.check_measurement(y5)
        if op.blind:
            raise DiffinvError("dmplug-video does not estimate operator parameters: blind clip "
                               "operators are not supported")
        if getattr(op, "image_like", True):
            check_measurement_range(y5.flatten(1), "y")
        B = y5.shape[0]
        x_shape = tuple(op.in_shape(y5.shape))
        T = x_shape[1]
        if tuple(x_shape[2:]) != tuple(prior.image_shape):
            raise ShapeError(f"y was made from frames of shape {x_shape[2:]}, but the prior "
                             f"models {tuple(prior.image_shape)} images")
        if T < 2:
            raise ShapeError("a clip needs at least 2 frames")
        if self.rank is not None and self.rank > T:
            raise DiffinvError(f"residual rank {self.rank} exceeds the {T} frames of the clip "
                               "(rank <= T; rank=None is full rank)")
        if truth is not None:
            check_clip(truth, "truth")
            truth = (truth[None] if truth.ndim == 4 else truth).to(y5)
            if tuple(truth.shape) != x_shape:
                raise ShapeError(f"truth of shape {tuple(truth.shape)} does not match the clips "
                                 f"{x_shape[int(single):]} y was made from")
        for k, v in params.items():
            if not isinstance(v, Tensor) or v.ndim == 0 or v.shape[0] not in (1, B):
                raise ShapeError(f"parameter {k!r} must hold one value per clip (leading size "
                                 f"1 or {B})")
        params = {k: v.to(y5.device) for k, v in params.items()}
        gens = batch_generators(seed, B)
        op = op.to(y5.device)
        prior.reset_nfe()
        t0 = time.perf_counter()
        was_training = prior.network.training
        prior.network.eval()
        try:
            x, trace = self._solve(y5, op, params, prior, gens, x_shape, truth, callback)
        finally:
            prior.network.train(was_training)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - t0
        return Result(x=(x[0] if single else x).detach(), nfe=prior.nfe, seconds=seconds,
                      trace=trace)

    def _data(self, ax: Tensor, y: Tensor) -> Tensor:
        d = (ax - y).flatten(2)
        per_frame = d.square().mean(2) if self.loss == "mse" else d.abs().mean(2)
        return per_frame.sum(1)

    def _solve(self, y, op, params, prior, gens, x_shape, truth, callback):
        from tqdm.auto import tqdm

        B, T, C, H, W = x_shape
        dev, dt = y.device, y.dtype
        ts = self.timesteps(prior)
        seeds = ClipSeeds(gens, T, (C, H, W), semantic=self.semantic, rank=self.rank,
                          device=dev, dtype=dt)
        leaves = list(seeds.leaves.values())
        opt = torch.optim.Adam(leaves, lr=self.lr)
        use_pixel = self.pixel and self.pixel_weight > 0
        flows = FlowTracker(B, T, (H, W), decay=self.flow_ema, method=self.flow_method,
                            upsample=self.flow_upsample, dtype=dt, device=dev) if use_pixel else None
        es = WMVEarlyStopping(self.window, self.patience) if self.early_stop == "wmv" else None
        active = torch.ones(B, dtype=torch.bool)  # not failed
        ran = torch.zeros(B, dtype=torch.long)
        last_it = torch.full((B,), -1, dtype=torch.long)
        nonfinite = torch.full((B,), -1, dtype=torch.long)
        last_x = torch.full(x_shape, float("nan"), dtype=dt, device=dev)
        logs: dict[str, list[Tensor]] = {"loss": [], "data": [], "pixel_term": [], "variance": [],
                                         "psnr": []}
        n_grad = 0

        def nan_row() -> Tensor:
            return torch.full((B,), float("nan"), dtype=torch.float64)

        for it in tqdm(range(self.iterations), disable=not self.progress, desc="dmplug-video"):
            run = active.clone()
            if es is not None and es.started:
                run &= ~es.stopped
            if not run.any():
                break
            idx = run.nonzero().flatten()
            idx_d = idx.to(dev)
            b = len(idx)
            z = seeds.seeds(idx_d)
            x = reverse_process(prior, z.reshape(b * T, C, H, W), ts, clip=self.clip,
                                checkpoint=self.checkpoint).reshape(b, T, C, H, W)
            ok = torch.isfinite(x.detach()).flatten(1).all(1)
            xs = torch.where(ok.reshape(-1, 1, 1, 1, 1), x, torch.zeros_like(x))
            sub = {k: (v[idx_d] if v.shape[0] == B and B > 1 else v) for k, v in params.items()}
            data = self._data(op(xs, **sub), y[idx_d])
            pix = torch.zeros_like(data)
            pixel_on = use_pixel and it >= self.pixel_start
            if pixel_on:
                if (it - self.pixel_start) % self.flow_every == 0:
                    good = ok.cpu()
                    if good.any():
                        flows.update(xs.detach()[good.to(dev)], idx[good])
                f, v = flows.get(idx_d)
                pix = pixel_consistency(xs, f, v)
            per = data + self.pixel_weight * pix
            per = torch.where(ok, per, torch.full_like(per, float("nan")))
            use = torch.isfinite(per.detach()).cpu()
            if use.any():
                grads = torch.autograd.grad(per[use.to(dev)].sum(), leaves, allow_unused=True)
                grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves,
                                                                                  strict=True)]
            else:
                grads = [torch.zeros_like(t) for t in leaves]
            n_grad += 1
            gok = torch.ones(B, dtype=torch.bool)
            for g in grads:
                gok &= torch.isfinite(g).flatten(1).all(1).cpu()
            good = torch.zeros(B, dtype=torch.bool)
            good[idx] = use & ok.cpu()
            failed = run & ~(good & gok)
            if failed.any():
                nonfinite[failed] = it
                warnings.warn(f"dmplug-video: non-finite objective, iterate or gradient at "
                              f"iteration {it} for clip(s) {failed.nonzero().flatten().tolist()};"
                              " their run stops with the last finite iterate", RuntimeWarning,
                              stacklevel=3)
            fine = run & ~failed
            # the full-batch view of this iteration (NaN for clips not computed)
            xd = x.detach()
            full_x = last_x.clone()
            full_x[idx_d] = torch.where(fine[idx].to(dev).reshape(-1, 1, 1, 1, 1), xd,
                                        last_x[idx_d])
            last_x = full_x
            last_it[fine] = it
            for key, val in (("loss", per), ("data", data), ("pixel_term", pix)):
                row = nan_row()
                if key != "pixel_term" or pixel_on:
                    row[idx] = val.detach().double().cpu()
                row[~run] = float("nan")
                logs[key].append(row)
            if es is not None:
                logs["variance"].append(es.update(torch.where(
                    fine.to(dev).reshape(-1, 1, 1, 1, 1), last_x, torch.zeros_like(last_x)),
                    it, active=fine))
            else:
                logs["variance"].append(nan_row())
            if truth is not None:
                from diffinv.metrics.psnr import psnr

                p = psnr(last_x.nan_to_num(0.0).reshape(B * T, C, H, W),
                         truth.reshape(B * T, C, H, W)).double().cpu().reshape(B, T).mean(1)
                logs["psnr"].append(torch.where(fine, p, nan_row()))
            if callback is not None:
                callback(it, last_x)
            active &= ~failed
            ran += run.long()
            keep = fine.to(dev)
            for t, g in zip(leaves, grads, strict=True):
                t.grad = torch.where(keep.reshape(-1, *([1] * (g.ndim - 1))), g,
                                     torch.zeros_like(g))
            opt.step()
        if (last_it < 0).any():
            bad = (last_it < 0).nonzero().flatten().tolist()
            raise NonFiniteError(f"dmplug-video: clip(s) {bad} never had a finite iterate")
        out, src = last_x, last_it.clone()
        stop = torch.full((B,), -1, dtype=torch.long)
        if es is not None and es.started:
            out = es.pick(last_x)
            src = torch.where(es.checked, es.best_iteration, src)
            stop = es.stop_iteration.clone()
        trace: dict[str, Any] = {k: stack_columns(v, B) for k, v in logs.items()
                                 if k != "psnr" or truth is not None}
        trace.update(picked_iteration=src, stop_iteration=stop, nonfinite_iteration=nonfinite,
                     iterations_run=ran, backward_nfe=n_grad * self.steps, timesteps=ts,
                     iterations=self.iterations, variant=self.variant, semantic=self.semantic,
                     rank=self.rank, pixel=self.pixel, pixel_weight=self.pixel_weight,
                     flow_every=self.flow_every, flow_ema=self.flow_ema,
                     pixel_start=self.pixel_start, early_stop=self.early_stop,
                     checkpoint=self.checkpoint)
        if self.early_stop == "wmv":
            trace.update(window=self.window, patience=self.patience)
        if flows is not None:
            never = (flows.updates == 0).to(dev).reshape(-1, 1, 1, 1, 1)
            trace.update(flow=torch.where(never, torch.full_like(flows.fw, float("nan")),
                                          flows.fw).cpu(),
                         valid=flows.valid.cpu(), flow_updates=flows.updates.clone())
        else:
            trace["flow_updates"] = torch.zeros(B, dtype=torch.long)
        if truth is not None and len(trace["psnr"]):
            peak = trace["psnr"].nan_to_num(float("-inf"))
            trace["oracle_psnr"] = peak.max(0).values
            trace["oracle_iteration"] = peak.argmax(0)
        return out, trace


__all__ = ["ClipSeeds", "DMPlugVideo", "FlowTracker", "pixel_consistency"]
