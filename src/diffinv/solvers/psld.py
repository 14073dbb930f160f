r"""PSLD (Rout, Raoof, Daras, Caramanis, Dimakis, Shakkottai; NeurIPS 2023) and Latent-DPS, on a
latent prior (:class:`~diffinv.latent.prior.LatentPrior`), after the PSLD sampler of the
``LatentDEM`` repository (``stable-diffusion/ldm/models/diffusion/psld.py``).

DDIM (eta 0) on the latent diffusion; after each step from ``z_t`` (:mod:`diffinv.solvers._latent`)::

    z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          x0 = D(z0_hat)
    E      = omega ||y - A(x0)|| + gamma ||E(A^T y + (I - A^T A) x0) - z0_hat||
    z_{t-1} = DDIM(z_t) - grad_{z_t} E

both norms per image and unsquared, the gradient through the encoder, the decoder and the
network (one backward pass). ``gamma`` = 0.1 and ``omega`` = 1 are the code's; Latent-DPS
(``latent-dps``) is ``gamma = 0`` (no adjoint needed, any operator). The second ("gluing") term
needs ``A^T``: ``psld`` requires a linear operator.

Step counts: the code runs 1000 DDIM steps of a T = 1000 latent diffusion; our latent diffusions
also have T = 1000, so the default ``steps = 1000`` is the code's. With fewer steps nothing else is
rescaled (the gradient is applied once per step, at the code's weights). Deviations: ``encode``
is the posterior mean (the code samples the KL posterior); the output is ``D(z_0)`` clamped to
[-1, 1].
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.solvers._latent import LatentGuided, forward_op, latent_norm, residual_norm
from diffinv.solvers.base import register_solver


@register_solver("psld")
class PSLD(LatentGuided):
    """PSLD: latent DDIM + gradient of omega ||y - A(D(z0))|| + gamma ||E(glued) - z0||."""

    summary = ("PSLD (latent prior): 1000 latent DDIM steps, gradient of the measurement norm + "
               "0.1 x the gluing term ||E(A^T y + (I - A^T A) D(z0)) - z0||")
    requires = ("linear",)

    def __init__(self, steps: int = 1000, gamma: float = 0.1, omega: float = 1.0,
                 eta: float = 0.0):
        super().__init__(steps, eta)
        if gamma < 0 or omega < 0:
            raise DiffinvError(f"gamma and omega must be >= 0, got {gamma}, {omega}")
        self.gamma, self.omega = float(gamma), float(omega)

    def prepare_run(self, ctx: dict[str, Any]) -> None:
        if self.gamma > 0:
            p = ctx["problem"]
            ctx["aty"] = p.operator.adjoint(ctx["y"], **p.params).detach()

    def energy(self, ctx: dict[str, Any], z0: Tensor, i: int, n: int) -> Tensor:
        p, lp = ctx["problem"], ctx["prior"]
        x0 = lp.decode(z0)
        ax = forward_op(p, x0)
        e = self.omega * residual_norm(ctx["y"], ax)
        if self.gamma > 0:
            glued = ctx["aty"] + x0 - p.operator.adjoint(ax, **p.params)
            e = e + self.gamma * latent_norm(lp.encode(glued), z0)
        return e


@register_solver("latent-dps")
class LatentDPS(PSLD):
    """Latent-DPS: PSLD without the gluing term (gamma = 0)."""

    summary = "Latent-DPS (latent prior): 1000 latent DDIM steps, gradient of ||y - A(D(z0))||"
    requires = ()

    def __init__(self, steps: int = 1000, omega: float = 1.0, eta: float = 0.0):
        super().__init__(steps, 0.0, omega, eta)
