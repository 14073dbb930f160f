r"""LatentDEM (Bai, Chen, Chen, Sun; arXiv 2407.01027, IEEE TIP 2026): blind deblurring by EM
with a latent diffusion prior, after ``AI4ImagingLab/LatentDEM`` (c7eb775; ``psld.py``,
``scripts/inference.py``), on a :class:`~diffinv.latent.prior.LatentPrior`.

DDIM (eta 0) on the latent diffusion (:mod:`diffinv.solvers._latent`); the kernel ``k`` starts
as a delta. At step ``i`` of ``N``, from ``z_t``::

    z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);   x0 = D(z0_hat)
    M-step: k <- HQS_ker(y_u, clamp((x0 + 1)/2, 0, 1), sigma_y / 2, k)      (no gradient)
    E-step: E = s_i [gamma ||E(y + x0 - k * x0) - z0_hat|| + omega ||k * x0 - y||]
    z_{t-1} = DDIM(z_t) - grad_{z_t} E

with ``gamma = 0.1``, ``omega = 1`` (the PSLD gluing term with the current kernel) and the scale
``s_i`` rising from 0.1 to 0.8 over the first 40 % of the steps (exponentially, the code's
default annealing; ``anneal="linear"`` interpolates linearly), then 0.8. The M-step is FastEM's
``HQS_ker`` (:func:`diffinv.solvers.fastem.hqs_kernel`, reused): ``hqs_iterations = 20`` of the
FFT closed-form data step with ``alpha = sigma^2 beta``, normalisation (clip at 0, sum 1) and the
plug-and-play kernel denoiser (``kernel_dncnn9``) at level ``sqrt(lam / beta)``, ``lam = 1``; all in
[0, 1] units as the code (``y_u = (y + 1)/2``).

Defaults scaled to 32x32: the code's ``beta = 5e6`` at 512x512 weighs the previous kernel against
``|X0|^2``, a sum over pixels 256 times smaller at 32x32, so ``beta = 5e6 / 256`` (as FastEM's
1e5 became 1e5 / 64 at 256 -> 32). The code runs 1000 DDIM steps of a T = 1000 latent diffusion
(ours too): ``steps = 1000``; with fewer steps the 40 % ramp stays 40 % of them. Circular blind
blur families only (the M-step's FFT model). Deviations: no re-centring of the kernel (option
``recentre``); ``encode`` is the posterior mean; the code's min-max renormalisation of ``y`` is
not applied (our measurements are in [-1, 1] already).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.solvers._blind import (
    BLIND_NEEDS,
    check_kernel_finite,
    circular_start_problem,
)
from diffinv.solvers._common import gaussian_sigma
from diffinv.solvers._latent import LATENT_NEEDS, LatentGuided, latent_norm, residual_norm
from diffinv.solvers.base import register_solver

BETA_32 = 5e6 / 256
ANNEALS = ("exponential", "linear")


def latentdem_scale(i: int, n: int, lo: float = 0.1, hi: float = 0.8, ramp: float = 0.4,
                    anneal: str = "exponential") -> float:
    """The E-step scale at step ``i`` of ``n``: ``lo`` -> ``hi`` over the first ``ramp`` of them."""
    span = max(ramp * n, 1e-9)
    f = min(1.0, i / span)
    if anneal == "linear":
        return lo + (hi - lo) * f
    return lo * (hi / lo) ** f


@register_solver("latentdem")
class LatentDEM(LatentGuided):
    """LatentDEM: latent PSLD-style E-step + HQS/PnP kernel M-step at every step."""
    estimates_kernel = True  # trace["kernel"]; takes the discrepancy option

    summary = ("LatentDEM (latent prior, blind): 1000 latent DDIM steps, PSLD-style E-step with "
               "the kernel estimate, 20 HQS + PnP-denoiser kernel iterations per step (circular "
               "blind blur families)")
    requires = ()
    needs = LATENT_NEEDS + BLIND_NEEDS

    def __init__(self, steps: int = 1000, gamma: float = 0.1, omega: float = 1.0,
                 scale_start: float = 0.1, scale_end: float = 0.8, ramp: float = 0.4,
                 anneal: str = "exponential", lam: float = 1.0, beta: float = BETA_32,
                 hqs_iterations: int = 20, recentre: bool = False,
                 denoiser: Any = "kernel_dncnn9", eta: float = 0.0):
        super().__init__(steps, eta)
        if anneal not in ANNEALS:
            raise DiffinvError(f"anneal must be one of {ANNEALS}, got {anneal!r}")
        if min(gamma, omega, lam) < 0 or beta <= 0 or int(hqs_iterations) < 1 \
                or not 0 < scale_start <= scale_end or not 0 < ramp <= 1:
            raise DiffinvError("need gamma, omega, lam >= 0, beta > 0, hqs_iterations >= 1, "
                               "0 < scale_start <= scale_end and ramp in (0, 1]")
        self.gamma, self.omega = float(gamma), float(omega)
        self.scale_start, self.scale_end, self.ramp, self.anneal = \
            float(scale_start), float(scale_end), float(ramp), anneal
        self.lam, self.beta, self.hqs_iterations = float(lam), float(beta), int(hqs_iterations)
        self.recentre, self.denoiser = bool(recentre), denoiser

    def unpack(self, y: Tensor, physics: Any, prior: Any) -> Any:
        return circular_start_problem(self, y, physics, prior,
                                      "models circular blur (its M-step is an FFT closed form)")

    def prepare_run(self, ctx: dict[str, Any]) -> None:
        from diffinv.learn.kernel_denoiser import load_kernel_denoiser

        size = ctx["problem"].params["kernel"].shape[-1]
        den = self.denoiser
        if isinstance(den, str):
            den = load_kernel_denoiser(den, size=size, device=ctx["y"].device)
        ctx["denoiser"] = den
        ctx["sigma"] = gaussian_sigma(self, ctx["problem"].noise) / 2
        ctx["y01"] = (ctx["y"] + 1) / 2

    def energy(self, ctx: dict[str, Any], z0: Tensor, i: int, n: int) -> Tensor:
        from diffinv.solvers.fastem import hqs_kernel, recentre

        p, lp, y = ctx["problem"], ctx["prior"], ctx["y"]
        x0 = lp.decode(z0)
        k_old = p.params["kernel"]
        with torch.no_grad():
            u0 = ((x0.detach() + 1) / 2).clamp(0, 1)
            k = hqs_kernel(ctx["y01"], u0, ctx["sigma"], k_old, ctx["denoiser"], lam=self.lam,
                           beta=self.beta, iterations=self.hqs_iterations)
            if self.recentre:
                k = recentre(k)
        check_kernel_finite(self.name, k, z0.detach(), k_old, i, None)
        p.params["kernel"] = k
        kx = p.operator(x0, kernel=k)
        e = self.omega * residual_norm(y, kx)
        if self.gamma > 0:
            e = e + self.gamma * latent_norm(lp.encode(y + x0 - kx), z0)
        return latentdem_scale(i, n, self.scale_start, self.scale_end, self.ramp,
                               self.anneal) * e

    def outputs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"kernel": ctx["problem"].params["kernel"].detach(),
                "forward_model": getattr(ctx["problem"], "forward_model", "")}
