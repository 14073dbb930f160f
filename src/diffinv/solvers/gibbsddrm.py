r"""GibbsDDRM: a partially collapsed Gibbs sampler over the image and the blur kernel (Murata et al.,
ICML 2023), as the official code (``functions/denoising.py`` ``sample_gibbsddrm``,
``functions/svd_replacement.py`` ``update_H_langevin``) runs it.

The image chain is DDRM (:mod:`diffinv.solvers.ddrm`, whose transition this module reuses) in the
SVD of the *current* kernel ``phi`` (a circular blur: exact FFT SVD,
:class:`~diffinv.physics.blur.FourierBlurSVD`), with GibbsDDRM's etas: the null space moves along
the predicted noise with ``eta_D`` fresh noise, observed coordinates less noisy than ``y`` move
towards ``y`` with weight ``eta_C`` (and ``eta_A = 0``, so fresh noise ``sqrt(1 - eta_C^2)``),
noisier ones take ``eta_B`` (paper, eq. 9). Frequencies with ``|k_hat(w)| < 0.05`` are treated as
unobserved (the code zeroes those singular values). On the timesteps ``t`` (100 steps, the
``leading`` grid ``990, ..., 10, 0``)::

    x0 = Tweedie(x_t);  x_{t'} ~ DDRM(x_t, x0; phi)                       (t' the next timestep)
    if t <= 0.7 T and t > 0: repeat 3 times:
        x0' = Tweedie(x_{t'})                                            (one more network call)
        phi <- Langevin(phi; y, x0'): 500 iterations of
               phi <- phi - (lr/2) grad U(phi) + sqrt(lr) N(0, I),
               U(phi) = ||y - phi * x0'||^2 / (2 sigma_y^2) + gamma ||phi||_1
               then phi <- phi / sum(phi)
        x_{t'} ~ DDRM(x_t, x0; phi)                                      (re-sampled, new SVD)

The kernel starts from the code's ``gauss_init``, ``phi(r) ∝ exp(-r / 10)`` on the 9x9 support
(despite its name not a Gaussian: the exponent is ``r``, not ``r^2``). The output is the last
iterate and the last ``phi`` (``trace["kernel"]``: clipped at 0 and renormalised for use as a PSF;
``trace["kernel_raw"]``: as the sampler holds it, which may have small negative entries).

Defaults (``configs/ffhq_256_deblur.yml``) and how they are scaled to 32x32:
100 steps, ``eta_B, eta_C, eta_D = 0.9, 0.8, 0.8``, ``eta_A = 0`` (only 0 is supported), kernel
updates below 70% of T, 3 per step, 500 Langevin iterations, ``gamma = 1000``. The Langevin step
``lr = 1e-11`` (256x256x3 images, 64x64 kernels, sigma 0.04) cannot be kept: what makes a step
stable and useful is ``lr`` times the largest curvature of ``U``, along the kernel's DC direction,
``~ N_pix C k^2 mean(x)^2 / sigma_y^2`` (about 3e7 for fashion32, 9x9 kernels, sigma 0.02).
Scaling by the pixel count and sigma alone gives 4.8e-10, which barely moves the kernel in
70 x 3 x 500 iterations (validation: 15.7 dB on blind motion blur, below the blurred y's 19.5);
``lr = 1e-8`` (``lr`` x curvature ~ 0.3) was chosen on fashion32 validation images
(``benchmarks/tools/blind_diffusion_valid.py``: 22.7 dB); ``3e-8`` (~1) diverged on one image.
``gamma`` is kept: the bias it puts on an entry relative to the entry's size (``gamma`` /
curvature vs 1/81) is about the official one (vs 1/4096), and on validation gamma 0 / 1000 /
10000 gave 18.6 / 20.8 / 20.0 dB. The loss uses the measurement's sigma_y.

Deviations: only circular blur (the families' benchmark boundary; the code's ``same_interp``
mode, which fills the border of ``y`` with the blurred ``x0`` to fake a larger periodic domain, is
unnecessary there); the Tweedie estimate is clamped to [-1, 1] (the code does not clamp it); the
gradient of ``U`` is computed in closed form from the Gram matrix of the blur's design matrix
(``U`` is quadratic in ``phi``) instead of by autograd (the same numbers up to rounding).
On blind rotation / zoom blur (not convolutions) it fits its convolution model, a 9x9
circular kernel, as the CL-DPS paper ran its kernel baselines (``solvers/_blind.py``);
``trace["forward_model"]`` says which model was fitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError
from diffinv.seeding import randn
from diffinv.solvers._blind import BLIND_NEEDS, check_kernel_finite, kernel_design, unpack_blind
from diffinv.solvers._common import check_finite, gaussian_sigma, operator_svd, progress
from diffinv.solvers.base import Solver, register_solver
from diffinv.solvers.ddrm import _safe_div, ddrm_init, ddrm_update

#: singular values (|k_hat|) below this are treated as zero, as in the official code
SINGULAR_FLOOR = 0.05
#: the official Langevin step (256x256x3, 64x64 kernels) and ours for 32x32, 9x9 (docstring)
LR_OFFICIAL = 1e-11
LR_32 = 1e-8


def exp_init_kernel(batch: int, size: int, *, device: Any = "cpu",
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The official ``gauss_init``: ``phi(r) ∝ exp(-r/10)``, ``r`` the distance to the anchor."""
    c = size // 2
    t = torch.arange(size, device=device, dtype=torch.float64) - c
    r = (t[:, None] ** 2 + t[None, :] ** 2).sqrt()
    k = torch.exp(-r / 10)
    return (k / k.sum()).to(dtype).expand(batch, size, size).clone()


def langevin_kernel(phi: Tensor, gram: Tensor, rhs: Tensor, sigma_y: float, gamma: float,
                    lr: float, noise: Tensor) -> Tensor:
    r"""``len(noise)`` Langevin iterations on ``U = ||y - D phi||^2/(2 sigma^2) + gamma ||phi||_1``
    (``gram = D^T D``, ``rhs = D^T y`` per image; ``phi`` ``(B, n)``, ``noise`` ``(B, iters, n)``),
    then ``phi / sum(phi)``."""
    for j in range(noise.shape[1]):
        grad = (torch.einsum("bij,bj->bi", gram, phi) - rhs) / sigma_y ** 2
        grad = grad + gamma * torch.sign(phi)
        phi = phi - 0.5 * lr * grad + math.sqrt(lr) * noise[:, j]
    return phi / phi.sum(1, keepdim=True)


@register_solver("gibbsddrm")
class GibbsDDRM(Solver):
    """GibbsDDRM: DDRM in the current kernel's SVD + Langevin kernel updates."""
    estimates_kernel = True  # trace["kernel"]; takes the discrepancy option

    summary = ("GibbsDDRM: DDRM steps in the current kernel's FFT SVD + Langevin kernel updates "
               "(blind blur families, circular; 9x9 conv. model on rotation/zoom)")
    requires = ()
    needs = BLIND_NEEDS

    def __init__(self, steps: int = 100, eta_b: float = 0.9, eta_c: float = 0.8,
                 eta_d: float = 0.8, update_start: float = 0.7, updates: int = 3,
                 langevin_iters: int = 500, lr: float = LR_32, gamma: float = 1000.0,
                 resample: bool = True, spacing: str = "leading"):
        for name, v in (("eta_b", eta_b), ("eta_c", eta_c), ("eta_d", eta_d),
                        ("update_start", update_start)):
            if not 0 <= v <= 1:
                raise DiffinvError(f"{name} must lie in [0, 1], got {v}")
        if int(steps) < 1 or int(updates) < 0 or int(langevin_iters) < 0:
            raise DiffinvError("steps must be >= 1, updates and langevin_iters >= 0")
        if lr < 0 or gamma < 0:
            raise DiffinvError(f"lr and gamma must be >= 0, got {lr}, {gamma}")
        self.steps, self.eta_b, self.eta_c, self.eta_d = int(steps), eta_b, eta_c, eta_d
        self.update_start, self.updates = float(update_start), int(updates)
        self.langevin_iters, self.lr, self.gamma = int(langevin_iters), float(lr), float(gamma)
        self.resample, self.spacing = bool(resample), spacing

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        bb = unpack_blind(self, y, physics, prior)
        if bb.boundary != "circular":
            raise DiffinvError(f"solver {self.name!r} needs the exact FFT SVD of a circular blur;"
                               f" this family's boundary is {bb.boundary!r}")
        sigma_y = gaussian_sigma(self, bb.noise)
        s_lv = max(sigma_y, 1e-3)  # the Langevin energy divides by sigma_y^2
        B, size, dev, dtype = y.shape[0], bb.kernel_size, y.device, y.dtype
        shape = bb.image_shape[1:]
        ab = prior.schedule.alpha_bar
        T = prior.num_timesteps
        ts = spaced_timesteps(T, self.steps, self.spacing)
        eta_obs = (1 - self.eta_c ** 2) ** 0.5  # eta_A = 0: y weight eta_C, fresh noise the rest

        def sig(t: int) -> float:
            return 0.0 if t < 0 else float(((1 - ab[t]) / ab[t]).sqrt())

        def factors(kernel: Tensor) -> tuple[Any, Tensor, Tensor]:
            svd = operator_svd(bb.problem(kernel), y)
            s = svd.singulars().to(y)
            s = torch.where(s < SINGULAR_FLOOR, torch.zeros_like(s), s)
            return svd, s, _safe_div(svd.ut(y), s)

        def draw() -> Tensor:
            return randn(shape, generators, device=dev, dtype=dtype).reshape(B, -1)

        def transition(x: Tensor, x0: Tensor, t: int, t_prev: int, svd: Any, s: Tensor,
                       yb: Tensor) -> Tensor:
            c = svd.vt(x) / float(ab[t]) ** 0.5
            c = ddrm_update(c, svd.vt(x0), yb, s, sig(t), sig(t_prev), sigma_y, self.eta_d,
                            self.eta_b, draw() if t_prev >= 0 else torch.zeros_like(c),
                            eta_obs=eta_obs)
            return (float(ab[t_prev]) ** 0.5 if t_prev >= 0 else 1.0) * svd.v(c)

        phi = exp_init_kernel(B, size, device=dev, dtype=dtype)
        svd, s, yb = factors(phi)
        x = float(ab[ts[0]]) ** 0.5 * svd.v(ddrm_init(yb, s, sig(ts[0]), sigma_y, draw()))
        trace: dict[str, Any] = {"steps": len(ts), "kernel_updates": 0,
                                 "forward_model": bb.model_note()}
        for i, t in enumerate(progress(ts, getattr(self, "progress", False), self.name, len(ts))):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            with torch.no_grad():
                x0 = prior.x0(x, t)
                x_next = transition(x, x0, t, t_prev, svd, s, yb)
                if t <= T * self.update_start and t_prev >= 0:
                    for j in range(self.updates):
                        x0n = prior.x0(x_next, t_prev)
                        phi_new = self._update_kernel(phi, y, x0n, bb.boundary, s_lv, generators)
                        check_kernel_finite(self.name, phi_new, x, phi, i, t, trace)
                        phi = phi_new
                        svd, s, yb = factors(phi)
                        trace["kernel_updates"] += 1
                        if self.resample or j < self.updates - 1:
                            x_next = transition(x, x0, t, t_prev, svd, s, yb)
            check_finite(self.name, x_next, x, i, t, trace)
            x = x_next
        trace["backward_nfe"] = 0
        trace["kernel_raw"] = phi.detach()
        k = phi.clamp_min(0)
        trace["kernel"] = k / k.flatten(1).sum(1).clamp_min(1e-12)[:, None, None]
        return x, trace

    def _update_kernel(self, phi: Tensor, y: Tensor, x0: Tensor, boundary: str, sigma: float,
                       generators: Sequence[torch.Generator]) -> Tensor:
        B, size = phi.shape[0], phi.shape[-1]
        n = size * size
        D = kernel_design(x0, size, boundary)            # (B, CHW, n)
        gram = D.transpose(1, 2) @ D
        rhs = (D.transpose(1, 2) @ y.flatten(1)[:, :, None])[:, :, 0]
        noise = randn((self.langevin_iters, n), generators, device=y.device, dtype=y.dtype)
        out = langevin_kernel(phi.reshape(B, n), gram, rhs, sigma, self.gamma, self.lr, noise)
        return out.reshape(B, size, size)
