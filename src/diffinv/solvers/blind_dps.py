r"""BlindDPS: parallel diffusion models of the image and the kernel (Chung, Kim, Kim, Ye; CVPR 2023),
as the official code (``blind_dps`` sampler, ``blind_condition_methods.py``) runs it.

Two reverse chains run side by side on the same timesteps: the image ``x_t`` under the image
prior and the kernel image ``k_t`` under a kernel diffusion prior (ours: ``kernels9``, a 12x12
canvas holding a 9x9 kernel, :mod:`diffinv.data.kernels`). At each step, from ``(x_t, k_t)``::

    x0_hat = clamp(Tweedie(x_t)),  c0_hat = clamp(Tweedie(k_t))           (both in [-1, 1])
    x', k' = ancestral DDPM steps of each chain (the priors' variances; no noise at t = 0)
    w      = ((c0_hat + 1)/2) on the kernel window        (the unnormalised kernel, >= 0)
    k0_hat = w / sum(w)                                    (a PSF: >= 0, sums to 1)
    L      = ||y - k0_hat * x0_hat||_2  +  lambda ||w||_1  (per image; the norm NOT squared)
    x_{t-1} = x' - s   sqrt(abar_t) grad_{x_t} L
    k_{t-1} = k' - s_k sqrt(abar_t) grad_{k_t} L

The gradients go through the blur, the clamps and both networks (one backward pass through each);
the step ``zeta_t = sqrt(abar_t)`` is the official code's (it overrides the config's constant
0.3; a comment there says the increasing step is more stable than the paper's constant one), and
``s``, ``s_k`` (``scale``, ``kernel_scale``) are multipliers on it (1 = official). Defaults
``s = 1``, ``s_k = 0.3``: on fashion32 validation images (blind motion blur, 2 images, sigma 0.02,
``benchmarks/tools/blind_diffusion_valid.py``) ``s_k`` = 1 / 0.3 / 0.1 gave 25.6 / 27.4 / 22.9 dB
and kernel MSE 1.1e-4 / 1.8e-5 / 6.4e-5 (the kernel canvas is 12x12 with a 9x9 window: the
residual's gradient on it is relatively larger than on the official 64x64 canvas). The outputs
are the final iterates: ``x_0`` and the kernel ``k0 = w / sum(w)`` of the final kernel canvas
(clamped to [-1, 1]), in ``trace["kernel"]`` ``(B, k, k)``.

**The kernel penalty.** The official code adds ``lambda ||k0_hat||_ord`` (run script:
``ord = 1``, ``lambda = 1``) *after* normalising ``k0_hat``, which is non-negative and sums to 1:
its L1 norm is identically 1 and its gradient zero, so in the official code the penalty is a
no-op. Here it acts where it can, on the unnormalised kernel ``w = (c0_hat + 1)/2`` (window only),
pushing the kernel canvas towards the empty background (a sparser kernel). On fashion32
validation images (``benchmarks/tools/blind_diffusion_valid.py``) the run script's ``lambda = 1``
acting there ruins the estimate (blind motion blur, 2 images: 13.5 dB and kernel MSE 2.9e-3,
against 25.6 dB and 1.1e-4 with no penalty), so the default is ``reg_weight = 0``: the official
code's effective behaviour.

Scaled to 32x32 (our choices): a 9x9 kernel on a 12x12 canvas (the official prior is 64x64 for
256x256 images); the blur is the blind family's (circular in the benchmarks; the official code
uses zero padding and cross-correlation at 64x64). Deviations: the variances are the priors'
own (ours fixed small; a learned range is used when a prior has one); ``steps < 1000`` respaces
both chains (an extension for tests; the method runs 1000 steps).
On blind rotation / zoom blur (not convolutions) it fits its convolution model, a 9x9
circular kernel, as the CL-DPS paper ran its kernel baselines (``solvers/_blind.py``);
``trace["forward_model"]`` says which model was fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.data.kernels import KERNEL_SETS, image_to_kernel
from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError
from diffinv.physics.blur import blur
from diffinv.seeding import randn
from diffinv.solvers._blind import BLIND_NEEDS, check_kernel_finite, unpack_blind
from diffinv.solvers._common import check_finite, progress
from diffinv.solvers.base import Solver, register_solver

DEFAULT_KERNEL_PRIOR = "kernels9"


def kernel_prior_size(kprior: Any) -> int:
    """The kernel size a kernel prior models: its ``kernel_size`` attribute, or the size of the
    kernel data set it was trained on (its domain, e.g. ``kernels9`` -> 9)."""
    size = getattr(kprior, "kernel_size", None)
    if size is None and getattr(kprior, "domain", None) in KERNEL_SETS:
        size = KERNEL_SETS[kprior.domain][0]
    if size is None:
        raise DiffinvError(f"prior {getattr(kprior, 'name', '?')!r} is not a kernel prior (its "
                           f"domain is not one of {sorted(KERNEL_SETS)}, and it has no "
                           "kernel_size)")
    return int(size)


def load_kernel_prior(kernel_prior: Any, device: torch.device) -> Any:
    """A kernel prior given by name/path (loaded) or as a :class:`DiffusionPrior` (moved)."""
    if isinstance(kernel_prior, str):
        from diffinv.diffusion.zoo import load_prior

        return load_prior(kernel_prior, device=device)
    return kernel_prior.to(device)


def _respaced(prior: Any, steps: int) -> Any:
    T = prior.num_timesteps
    if steps > T:
        raise DiffinvError(f"steps {steps} exceed the prior's T = {T}")
    return prior if steps == T else prior.respaced(spaced_timesteps(T, steps, "uniform"))


@register_solver("blind-dps")
class BlindDPS(Solver):
    """BlindDPS: image and kernel diffusion chains guided by their shared residual norm."""
    estimates_kernel = True  # trace["kernel"]; takes the discrepancy option

    summary = ("BlindDPS: parallel image + kernel diffusion (1000 steps), grad of "
               "||y - k0_hat * x0_hat|| on both chains (blind blur families; 9x9 conv. model "
               "on rotation/zoom)")
    requires = ()
    needs = BLIND_NEEDS

    def __init__(self, kernel_prior: Any = DEFAULT_KERNEL_PRIOR, steps: int = 1000,
                 scale: float = 1.0, kernel_scale: float = 0.3, reg_weight: float = 0.0):
        if scale < 0 or kernel_scale < 0 or reg_weight < 0:
            raise DiffinvError("scale, kernel_scale and reg_weight must be >= 0; got "
                               f"{scale}, {kernel_scale}, {reg_weight}")
        if int(steps) < 1:
            raise DiffinvError(f"steps must be >= 1, got {steps}")
        self.kernel_prior = kernel_prior
        self.steps, self.scale = int(steps), float(scale)
        self.kernel_scale = float(kernel_scale)
        self.reg_weight = float(reg_weight)
        self._kprior: Any = None

    def _kernel_prior(self, prior: Any, size: int, device: torch.device) -> Any:
        if self._kprior is None or self._kprior.device != device:
            self._kprior = load_kernel_prior(self.kernel_prior, device)
        kp = self._kprior
        have = kernel_prior_size(kp)
        if have != size:
            raise DiffinvError(f"the kernel prior {getattr(kp, 'name', '?')!r} models {have}x{have}"
                               f" kernels but the blind family's kernel is {size}x{size}")
        if kp.num_timesteps != prior.num_timesteps:
            raise DiffinvError(f"the kernel prior has T = {kp.num_timesteps} timesteps, the image "
                               f"prior T = {prior.num_timesteps}: the chains must share them")
        return kp

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        bb = unpack_blind(self, y, physics, prior)
        size, boundary = bb.kernel_size, bb.boundary
        kprior = self._kernel_prior(prior, size, y.device)
        work, kwork = _respaced(prior, self.steps), _respaced(kprior, self.steps)
        kprior.reset_nfe()
        dev, dtype = y.device, y.dtype
        shape, kshape = bb.image_shape[1:], tuple(kprior.image_shape)
        ab_full = prior.schedule.alpha_bar
        ts = [int(v) for v in work.schedule.timesteps.tolist()]
        x = randn(shape, generators, device=dev, dtype=dtype)
        k = randn(kshape, generators, device=dev, dtype=dtype)
        trace: dict[str, Any] = {"steps": self.steps, "log_residual": [],
                                 "forward_model": bb.model_note()}
        rows = range(work.num_timesteps - 1, -1, -1)
        try:
            for i, row in enumerate(progress(rows, getattr(self, "progress", False), self.name,
                                             work.num_timesteps)):
                t = ts[row]
                x_in = x.detach().requires_grad_(True)
                k_in = k.detach().requires_grad_(True)
                with torch.enable_grad():
                    eps, v = work.net_out(x_in, row)
                    ceps, cv = kwork.net_out(k_in, row)
                    x0 = work.x0_from_eps(x_in, row, eps)
                    c0 = kwork.x0_from_eps(k_in, row, ceps)
                    check_finite(self.name, x0.detach(), x, i, t, trace)
                    check_kernel_finite(self.name, c0.detach(), x, k, i, t, trace)
                    x_prev = self._ancestral(work, x_in.detach(), x0.detach(), v, row,
                                             generators)
                    k_prev = self._ancestral(kwork, k_in.detach(), c0.detach(), cv, row,
                                             generators)
                    kernel = image_to_kernel(c0, size)
                    res = (y - blur(x0, kernel, boundary)).flatten(1).norm(dim=1)
                    loss = res.sum()
                    if self.reg_weight > 0:
                        o = (kshape[-1] - size) // 2
                        w = (c0[:, 0, o:o + size, o:o + size] + 1) / 2
                        loss = loss + self.reg_weight * w.abs().flatten(1).sum(1).sum()
                    gx, gk = torch.autograd.grad(loss, (x_in, k_in))
                zeta = float(ab_full[t]) ** 0.5
                x_new = (x_prev - self.scale * zeta * gx).detach()
                k_new = (k_prev - self.kernel_scale * zeta * gk).detach()
                trace["log_residual"].append(res.detach().cpu())
                check_finite(self.name, x_new, x, i, t, trace)
                check_kernel_finite(self.name, k_new, x, k, i, t, trace)
                x, k = x_new, k_new
        finally:
            for w_, p_ in ((work, prior), (kwork, kprior)):
                if w_ is not p_:
                    p_._nfe += w_.nfe
        prior._nfe += kprior.nfe  # both networks' forward calls
        trace["backward_nfe"] = 2 * self.steps
        trace["kernel"] = image_to_kernel(k.clamp(-1, 1), size).detach()
        trace["kernel_canvas"] = k.detach()
        return x, trace

    @staticmethod
    def _ancestral(work: Any, x_t: Tensor, x0: Tensor, v: Tensor | None, row: int,
                   generators: Sequence[torch.Generator]) -> Tensor:
        """The DDPM step from row ``row`` (the prior's variance; learned range from ``v``)."""
        mean = work.posterior_mean(x0, x_t, row)
        if row == 0:
            return mean
        z = randn(x_t.shape[1:], generators, device=x_t.device, dtype=x_t.dtype)
        logvar = work.posterior_log_variance(x_t, row, None if v is None else v.detach())
        return mean + (0.5 * logvar).exp() * z
