r"""Shared pieces of the latent-diffusion solvers (resample, psld, latent-dps, latentdem).

Notation: ``z_t`` the latent iterate, ``eps = eps_theta(z_t, t)`` of the prior's latent diffusion,
``z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (never clamped), ``D``/``E`` the prior's
decoder/encoder (scaled latents), DDIM with ``eta`` between spaced timesteps (``t_prev = -1``:
``abar = 1``). Every random draw (``z_T``, DDIM noise, ReSample's resampling noise) comes from the
per-image generators, so batching never changes a per-image result; the per-image energies are
summed before a gradient, so each image's gradient is its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError
from diffinv.latent.prior import require_latent
from diffinv.seeding import randn
from diffinv.solvers._common import Problem, check_finite, progress, unpack
from diffinv.solvers.base import Solver

#: what a latent solver needs, for its help (``Solver.needs``)
LATENT_NEEDS = ("a latent prior (capability 'latent': encoder, decoder, diffusion on latents)",)


def residual_norm(y: Tensor, ax: Tensor) -> Tensor:
    """``||y_b - A(x_b)||_2`` per image (unsquared; a tiny floor keeps the gradient finite)."""
    r = (y - ax).flatten(1)
    return (r.pow(2).sum(1) + torch.finfo(r.dtype).tiny).sqrt()


def latent_norm(a: Tensor, b: Tensor) -> Tensor:
    """``||a_b - b_b||_2`` per image (PSLD's gluing term)."""
    return residual_norm(a, b)


def ddim_plan(T: int, steps: int) -> list[tuple[int, int]]:
    """[(t, t_prev)] of ``steps`` uniformly spaced DDIM timesteps (``t_prev = -1`` at the end)."""
    if steps < 1 or steps > T:
        raise DiffinvError(f"steps must lie in 1..{T} (the latent diffusion's T), got {steps}")
    ts = [int(t) for t in spaced_timesteps(T, steps, "uniform")]
    return [(t, ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)]


def abar(latent: Any, t: int) -> float:
    return 1.0 if t < 0 else float(latent.schedule.alpha_bar[t])


def tweedie(latent: Any, z_t: Tensor, t: int, eps: Tensor, mode: str = "formula") -> Tensor:
    """``z0_hat``: ``"formula"`` ``(z - sqrt(1 - abar) eps)/sqrt(abar)``; ``"code"`` ReSample's
    ``(z - (1 - abar) eps)/sqrt(abar)`` (see :mod:`diffinv.solvers.resample`)."""
    a = abar(latent, t)
    c = (1 - a) ** 0.5 if mode == "formula" else (1 - a)
    return (z_t - c * eps) / a ** 0.5


def ddim(z0: Tensor, eps: Tensor, a_prev: float, a_t: float, eta: float,
         noise: Tensor | None) -> Tensor:
    """The DDIM update (Song et al. eq. 12) from ``(z0_hat, eps)`` at ``abar_t`` to ``abar_prev``."""
    sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * max(1 - a_t / a_prev, 0.0) ** 0.5
    out = a_prev ** 0.5 * z0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0 and noise is not None:
        out = out + sigma * noise
    return out


class LatentGuided(Solver):
    """DDIM on the latent diffusion with a gradient step on ``z_t`` after every step:
    ``z_{t-1} = DDIM(z_t) - grad_{z_t} energy(z_t, z0_hat(z_t))`` (PSLD, Latent-DPS, LatentDEM).
    Subclasses implement :meth:`energy` (per image) and may override :meth:`prepare_run`."""

    needs = LATENT_NEEDS

    def __init__(self, steps: int = 1000, eta: float = 0.0):
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise DiffinvError(f"steps must be an integer >= 1, got {steps!r}")
        if not 0.0 <= float(eta) <= 1.0:
            raise DiffinvError(f"eta must lie in [0, 1], got {eta}")
        self.steps, self.eta = int(steps), float(eta)

    def unpack(self, y: Tensor, physics: Any, prior: Any) -> Any:
        return unpack(self, y, physics, prior)

    def prepare_run(self, ctx: dict[str, Any]) -> None:
        """Per-run state into ``ctx`` (the problem is ``ctx["problem"]``)."""

    def energy(self, ctx: dict[str, Any], z0: Tensor, i: int, n: int) -> Tensor:
        raise NotImplementedError

    def outputs(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {}

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        lp = require_latent(self.name, prior)
        problem = self.unpack(y, physics, prior)
        latent = lp.latent
        plan = ddim_plan(latent.num_timesteps, self.steps)
        ctx: dict[str, Any] = {"y": y, "problem": problem, "prior": lp, "log_energy": []}
        self.prepare_run(ctx)
        shape = lp.latent_shape
        z = randn(shape, generators, device=y.device, dtype=y.dtype)
        trace: dict[str, Any] = {"sampler": "ddim", "steps": len(plan)}
        backward = 0
        for i, (t, t_prev) in enumerate(progress(plan, getattr(self, "progress", False),
                                                 self.name, len(plan))):
            z_in = z.detach().requires_grad_(True)
            with torch.enable_grad():
                eps = latent.eps(z_in, t)
                z0 = tweedie(latent, z_in, t, eps)
                a_t, a_prev = abar(latent, t), abar(latent, t_prev)
                noise = (randn(shape, generators, device=y.device, dtype=y.dtype)
                         if self.eta > 0 and t_prev >= 0 else None)
                z_prev = ddim(z0.detach(), eps.detach(), a_prev, a_t, self.eta, noise)
                e = self.energy(ctx, z0, i, len(plan))
                (g,) = torch.autograd.grad(e.sum(), z_in)
            backward += 1
            ctx["log_energy"].append(e.detach().cpu())
            z_new = (z_prev - g).detach()
            check_finite(self.name, z_new, z, i, t, trace)
            z = z_new
        with torch.no_grad():
            x = lp.decode(z).clamp(-1, 1)
        trace["backward_nfe"] = backward
        trace["log_energy"] = ctx["log_energy"]
        trace.update(self.outputs(ctx))
        return x, trace


def forward_op(problem: Problem, x: Tensor) -> Tensor:
    return problem.operator(x, **problem.params)
