r"""FastEM: Fast Diffusion EM for blind deblurring (Laroche, Almansa, Coupeté; WACV 2024), the
"fast" variant (``fastem_pigdm`` sampler of the official code): one kernel M-step inside every
reverse step of a PiGDM posterior sampler.

100 respaced DDPM ancestral steps (fixed-small variance) through the interleaving template
(:mod:`diffinv.solvers.interleave`); the kernel starts as a delta. At each step, from ``x_t``, with
everything in [0, 1] units as in the code (``u = (x + 1)/2``, ``y_u = (y + 1)/2``,
``sigma = sigma_y / 2``; a blur with a kernel summing to 1 commutes with this affine map)::

    u0  = clamp((x0_hat + 1)/2, 0, 1)
    k   <- HQS_ker(y_u, u0, sigma, k)                        (M-step, no gradient; see below)
    k   <- k shifted so that its centre of mass sits on the anchor
    v   = (1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev),  r^2 = v/(v + 1)
    g   = K^T (r^2 K K^T + sigma^2)^{-1} (y_u - K u0)         (PiGDM's vector, FFT SVD of k)
    x_{t-1} = x' + sqrt(abar_t) r^2 sqrt(1/(1 + v)) grad_{x_t} <g, u0>

where ``x'`` is the unconditional ancestral proposal and the gradient goes through the clamp and
the network (one backward pass). ``g`` is :func:`diffinv.solvers.pigdm.pigdm_vector` (reused), with
the code's ``r`` (from the DDPM posterior variance ``v``, not PiGDM's ``1 - abar_t``).

**M-step** (``HQS_ker``, half-quadratic splitting, 10 iterations from the previous kernel ``z``):

* data step, closed form over the whole periodic ``H x W`` support:
  ``k_full = F^{-1}[ (conj(U0) Y + alpha Z) / (|U0|^2 + alpha) ]``, ``alpha = sigma^2 beta``
  (``Z`` the FFT of ``z`` placed periodically around the anchor); cropped to the ``s x s``
  window, clipped at 0 and normalised to sum 1;
* prior step: ``z = D(k, sqrt(lambda / beta))``, the plug-and-play kernel denoiser
  (:mod:`diffinv.learn.kernel_denoiser`, a DnCNN trained here on the ``kernels9`` train split),
  clipped at 0 and normalised.

Defaults and their 32x32 scaling: the code uses ``beta = 1e5``, ``lambda = 1`` (33x33 kernels)
or 0.2 (64x64), 10 HQS iterations, 100 steps. ``alpha = sigma^2 beta`` weighs the previous kernel
against ``|U0|^2``, which is a sum over pixels: 64 times smaller at 32x32 than at 256x256, so
``beta = 1e5 / 64 = 1562.5`` keeps the balance. The denoiser's level ``sqrt(lambda / beta)``
then is 0.025 at ``lambda = 1``. ``lambda`` was chosen on fashion32 validation images
(``benchmarks/tools/blind_diffusion_valid.py``, 4 images, sigma 0.02, mean PSNR over blind motion /
Gaussian blur): 3: 17.8 dB, 1: 18.8, 0.1: 20.3, **0.03: 20.7**, 0.01: 20.7, 0 (no denoiser):
18.5; so ``lam = 0.03`` (denoiser level 0.0044). The guidance multiplier ``scale`` (1 = the code)
stays 1: at ``lambda = 0.1``, 0.3 gave 19.3 dB against 20.3 (at ``lambda = 1``: 0.3 / 1 / 3 gave
19.0 / 18.8 / 17.3 dB).

Deviations: the re-centring uses a bilinear sub-pixel shift with zero fill (the code:
``scipy.ndimage`` cubic-spline shift) followed by clipping at 0 and renormalisation; only circular
blur (the exact FFT SVD; the code's FFT convolution is circular too); the DnCNN is ours (no batch
normalisation, trained on our 9x9 kernels).
On blind rotation / zoom blur (not convolutions) it fits its convolution model, a 9x9
circular kernel, as the CL-DPS paper ran its kernel baselines (``solvers/_blind.py``);
``trace["forward_model"]`` says which model was fitted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.physics.blur import kernel_spectrum
from diffinv.solvers._blind import (
    BLIND_NEEDS,
    check_kernel_finite,
    circular_start_problem,
    delta_kernel,
)
from diffinv.solvers._common import Problem, gaussian_sigma, operator_svd
from diffinv.solvers.base import register_solver
from diffinv.solvers.interleave import Context, Interleaved, Step
from diffinv.solvers.pigdm import pigdm_vector

BETA_32 = 1e5 / 64


def normalize_kernel(k: Tensor) -> Tensor:
    """Clip at 0 and scale to sum 1 per kernel (``(B, s, s)``); an all-zero kernel -> delta
    (a NaN stays NaN, for the divergence check)."""
    k = torch.where(k.isnan(), k, k.clamp_min(0))
    s = k.flatten(1).sum(1)[:, None, None]
    return torch.where(s == 0, delta_kernel(k.shape[0], k.shape[-1], device=k.device,
                                            dtype=k.dtype),
                       k / torch.where(s > 0, s, torch.ones_like(s)))


def crop_periodic(full: Tensor, size: int) -> Tensor:
    """The ``size x size`` window around the anchor of a periodic ``(B, H, W)`` kernel (the
    inverse of the placement in :func:`~diffinv.physics.blur.kernel_spectrum`)."""
    c = size // 2
    return torch.roll(full, shifts=(c, c), dims=(-2, -1))[..., :size, :size]


def kernel_data_step(y: Tensor, u0: Tensor, z: Tensor, alpha: float) -> Tensor:
    """``argmin_k ||y - k * u0||^2 + alpha ||k - z||^2`` over periodic ``H x W`` kernels, cropped
    to ``z``'s window (channels share the kernel: sums over C)."""
    H, W = y.shape[-2:]
    U = torch.fft.rfft2(u0)
    Y = torch.fft.rfft2(y)
    Z = kernel_spectrum(z, H, W)[:, 0]
    num = (U.conj() * Y).sum(1) + alpha * Z
    den = (U.abs() ** 2).sum(1) + alpha
    return crop_periodic(torch.fft.irfft2(num / den, s=(H, W)), z.shape[-1])


def recentre(k: Tensor) -> Tensor:
    """Shift each kernel (bilinear, zero fill) so that its centre of mass is the anchor."""
    B, s = k.shape[0], k.shape[-1]
    grid1 = torch.arange(s, device=k.device, dtype=k.dtype)
    mass = k.flatten(1).sum(1).clamp_min(1e-12)
    cy = (k.sum(2) * grid1).sum(1) / mass
    cx = (k.sum(1) * grid1).sum(1) / mass
    shift = torch.stack([cx, cy], 1) - s // 2   # sample the input at (p + com - anchor)
    lin = (2 * grid1 + 1) / s - 1               # pixel centres in [-1, 1] (align_corners=False)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    base = torch.stack([gx, gy], -1)[None].expand(B, s, s, 2)
    grid = base + (2 * shift / s)[:, None, None, :]
    out = F.grid_sample(k[:, None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[:, 0]
    return normalize_kernel(out)


def hqs_kernel(y: Tensor, u0: Tensor, sigma: float, k0: Tensor, denoiser: Any, *, lam: float,
               beta: float, iterations: int) -> Tensor:
    """FastEM's M-step ``HQS_ker`` (see the module docstring); all in [0, 1] units."""
    alpha = max(sigma ** 2 * beta, 1e-8)  # noiseless y: a tiny alpha, not a division by 0
    z = k0
    sd = (lam / beta) ** 0.5
    for _ in range(iterations):
        k = normalize_kernel(kernel_data_step(y, u0, z, alpha))
        z = normalize_kernel(denoiser(k[:, None], sd)[:, 0]) if lam > 0 else k
    return z


@register_solver("fastem")
class FastEM(Interleaved):
    """Fast diffusion EM: PiGDM E-step + one HQS/PnP kernel M-step per reverse step."""
    estimates_kernel = True  # trace["kernel"]; takes the discrepancy option

    summary = ("FastEM (fast): 100 PiGDM-guided DDPM steps, one HQS + PnP-denoiser kernel "
               "M-step per step (blind blur families, circular; 9x9 conv. model on "
               "rotation/zoom)")
    requires = ()
    needs = BLIND_NEEDS
    needs_grad = True
    default_steps = 100
    default_sampler = "ddpm"

    def __init__(self, steps: int = 100, lam: float = 0.03, beta: float = BETA_32,
                 hqs_iterations: int = 10, scale: float = 1.0, recentre: bool = True,
                 denoiser: Any = "kernel_dncnn9"):
        super().__init__(steps, "ddpm", 0.0, "uniform")
        if lam < 0 or beta <= 0 or scale < 0 or int(hqs_iterations) < 1:
            raise DiffinvError(f"need lam >= 0, beta > 0, scale >= 0, hqs_iterations >= 1; got "
                               f"{lam}, {beta}, {scale}, {hqs_iterations}")
        self.lam, self.beta, self.hqs_iterations = float(lam), float(beta), int(hqs_iterations)
        self.scale, self.recentre, self.denoiser = float(scale), bool(recentre), denoiser

    def unpack(self, y: Tensor, physics: Any, prior: Any) -> Problem:
        return circular_start_problem(self, y, physics, prior,
                                      "needs the exact FFT SVD of a circular blur")

    def prepare(self, ctx: Context) -> None:
        from diffinv.learn.kernel_denoiser import load_kernel_denoiser

        size = ctx.problem.params["kernel"].shape[-1]
        den = self.denoiser
        if isinstance(den, str):
            den = load_kernel_denoiser(den, size=size, device=ctx.y.device)
        elif getattr(den, "size", size) != size:
            raise DiffinvError(f"the kernel denoiser models {den.size}x{den.size} kernels but the "
                               f"blind family's kernel is {size}x{size}")
        ctx.data["denoiser"] = den
        ctx.data["sigma"] = gaussian_sigma(self, ctx.problem.noise) / 2
        ctx.data["y01"] = (ctx.y + 1) / 2

    def guide(self, ctx: Context, step: Step) -> Tensor:
        p, sigma, y01 = ctx.problem, ctx.data["sigma"], ctx.data["y01"]
        u0 = ((step.x0 + 1) / 2).clamp(0, 1)
        k_old = p.params["kernel"]
        with torch.no_grad():
            k = hqs_kernel(y01, u0.detach(), sigma, k_old, ctx.data["denoiser"], lam=self.lam,
                           beta=self.beta, iterations=self.hqs_iterations)
            if self.recentre:
                k = recentre(k)
        check_kernel_finite(self.name, k, step.x_t.detach(), k_old, step.index, step.t)
        p.params["kernel"] = k
        a, ap = step.abar, step.abar_prev
        v = (1 - ap) / (1 - a) * (1 - a / ap)
        r2 = v / (v + 1)
        if r2 == 0:
            return step.x_prev
        vec = pigdm_vector(u0.detach(), y01, operator_svd(p, ctx.y), r2, sigma)
        (g,) = torch.autograd.grad((u0 * vec).sum(), step.x_t)
        ctx.backward_nfe += 1
        return step.x_prev + self.scale * a ** 0.5 * r2 * (1 / (1 + v)) ** 0.5 * g

    def outputs(self, ctx: Context) -> dict[str, Any]:
        return {"kernel": ctx.problem.params["kernel"].detach(),
                "forward_model": getattr(ctx.problem, "forward_model", "")}
