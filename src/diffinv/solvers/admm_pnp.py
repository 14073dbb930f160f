r"""ADMM plug-and-play (Venkatakrishnan, Bouman, Wohlberg 2013; Chan, Wang, Elgendy 2017) with the
diffusion prior's Tweedie estimate as the plug-in denoiser: a classical, deterministic baseline.

For ``min_x ||y - A x||^2 / (2 sigma_y^2) + phi(x)`` with penalty ``rho_k = 1/sigma_k^2``::

    x_{k+1} = argmin_x ||y - A x||^2/(2 sigma_y^2) + rho_k/2 ||x - (z_k - u_k)||^2
            = V [ (s U^T y + rho_k sigma_y^2 w_{:m}) / (s^2 + rho_k sigma_y^2) ; w_{m:} ],
              w = V^T (z_k - u_k)                                   (closed form through the SVD)
    z_{k+1} = D_{sigma_k}(x_{k+1} + u_k)                             (denoiser at noise sigma_k)
    u_{k+1} = u_k + x_{k+1} - z_{k+1}

``D_sigma(v) = x0_hat(sqrt(abar_t) v, t)`` with the timestep ``t`` whose VE noise level
``sigma_t^2 = (1 - abar_t)/abar_t`` is closest to ``sigma^2`` (a Gaussian-noisy image ``v = x +
sigma n`` scaled by ``sqrt(abar_t)`` is distributed as ``x_t``); ``rho_k = 1/sigma_t^2`` uses the
level actually denoised. ``sigma_k`` decreases geometrically from ``sigma_max`` to ``sigma_min``
over the iterations (Chan et al.'s increasing ``rho``). Start ``z_0 = A^+ y`` (clipped), ``u_0 = 0``;
the output is ``z_K``.

Deviations: the Tweedie estimate is an MMSE denoiser, not the proximal map of ``phi`` (they agree
for a Gaussian prior, where the fixed point is the exact posterior mean, which the tests check);
the x-step uses the SVD, so the operator needs one. Defaults: 100 iterations, sigma 0.5 -> 0.05; the
``tuned32`` preset (:mod:`diffinv.solvers.presets`, chosen on validation images) uses 1 -> 0.1 for
blur and super-resolution and keeps 0.5 -> 0.05 for inpainting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.solvers._common import check_finite, gaussian_sigma, operator_svd, progress, unpack
from diffinv.solvers.base import Solver, register_solver


def nearest_timestep(abar: Tensor, sigma: float) -> int:
    """The timestep whose VE level ``sqrt((1 - abar_t)/abar_t)`` is closest to ``sigma``."""
    levels = ((1 - abar) / abar).sqrt()
    return int((levels - sigma).abs().argmin())


def admm_x_step(w: Tensor, uty: Tensor, s: Tensor, rho: float, sigma_y: float, m: int) -> Tensor:
    """The data-step coefficients ``V^T x_{k+1}`` given ``w = V^T (z - u)`` and ``U^T y``."""
    lam = rho * sigma_y ** 2
    den = s * s + lam
    num = s * uty + lam * w[:, :m]
    head = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), w[:, :m])
    return torch.cat([head, w[:, m:]], dim=1)


@register_solver("admm-pnp")
class ADMMPnP(Solver):
    """ADMM plug-and-play with the prior's Tweedie denoiser."""

    summary = "ADMM-PnP: 100 ADMM iterations, Tweedie denoiser as prox (linear, SVD, Gaussian)"
    requires = ("linear", "svd")

    def __init__(self, iters: int = 100, sigma_max: float = 0.5, sigma_min: float = 0.05):
        if iters < 1 or not 0 < sigma_min <= sigma_max:
            raise DiffinvError("admm-pnp needs iters >= 1 and 0 < sigma_min <= sigma_max")
        self.iters, self.sigma_max, self.sigma_min = int(iters), float(sigma_max), float(sigma_min)

    def sigmas(self) -> list[float]:
        if self.iters == 1:
            return [self.sigma_min]
        r = (self.sigma_min / self.sigma_max) ** (1 / (self.iters - 1))
        return [self.sigma_max * r ** k for k in range(self.iters)]

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        problem = unpack(self, y, physics, prior)
        sigma_y = gaussian_sigma(self, problem.noise)
        svd = operator_svd(problem, y)
        s = svd.singulars().to(y)
        uty = svd.ut(y)
        ab = prior.schedule.alpha_bar
        clip = getattr(prior, "clip_denoised", True)
        z = svd.pinv(y, 1e-6)
        z = z.clamp(-1, 1) if clip else z
        u = torch.zeros_like(z)
        for k, sd in enumerate(progress(self.sigmas(), getattr(self, "progress", False),
                                        self.name, self.iters)):
            t = nearest_timestep(ab, sd)
            a = float(ab[t])
            rho = a / (1 - a)
            with torch.no_grad():
                x = svd.v(admm_x_step(svd.vt(z - u), uty, s, rho, sigma_y, svd.m))
                z_new = prior.x0((x + u) * a ** 0.5, t)
                u = u + x - z_new
            check_finite(self.name, z_new, z, k, t)
            z = z_new
        return z, {"iters": self.iters, "backward_nfe": 0}
