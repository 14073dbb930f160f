r"""ReSample (Song, Kwon, Zhang, Hu, Qu, Shen; ICLR 2024): latent diffusion with hard data
consistency and stochastic resampling, after the official ``soominkwon/resample``
(``ldm/models/diffusion/ddim.py``, 3e332b2), on a :class:`~diffinv.latent.prior.LatentPrior`.

DDIM (eta 0) on ``N`` spaced timesteps of the latent diffusion; step ``i`` has the code's
``index = N - 1 - i`` (counting down). From ``z_t`` (:mod:`diffinv.solvers._latent`)::

    z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    z'     = DDIM(z_t -> t_prev) - scale abar_t grad_{z_t} ||y - A(D(z0_hat))||   (latent DPS)

then, when ``index % every == 0`` and the step is not in the first third (``index <= 2 N/3``),
hard data consistency:

1. **time travel**: ``travel`` further unconditional DDIM steps from ``z'``; their last
   ``z0`` estimate is ``z0_tt`` (at the clean end ``z'`` itself);
2. middle third (``index >= N/3``): **pixel optimisation** from ``x = D(z0_tt)``: AdamW (lr
   ``pixel_lr`` 1e-2) on ``mean (y - A(x))^2`` up to ``pixel_iters`` = 2000 iterations or until
   that MSE is below ``pixel_tol`` = 1e-6; ``z0_y = E(x)``. Last third: **latent optimisation**
   from ``z0_tt``: AdamW (lr ``latent_lr`` 5e-3) on ``mean (y - A(D(z)))^2``, up to
   ``latent_iters`` = 500 iterations, stopped when the loss rises above its value ``patience`` =
   200 iterations earlier; ``z0_y = z``;
3. **stochastic resampling** (paper eq. 9; :func:`stochastic_resample`) with
   ``sigma^2 = gamma (1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev)``, ``gamma`` = 40::

       z_{t_prev} = (sigma^2 sqrt(abar_prev) z0_y + (1 - abar_prev) z') / (sigma^2 + 1 - abar_prev)
                    + sqrt(1 / (1/sigma^2 + 1/(1 - abar_prev))) n

   i.e. the posterior of ``z`` under ``z ~ N(sqrt(abar_prev) z0_y, (1 - abar_prev) I)`` (the
   forward diffusion of the consistent latent) and ``z' | z ~ N(z, sigma^2 I)``.

After the loop one more latent optimisation of the final latent; the output is its decoding,
clamped to [-1, 1]. Every optimisation stops image by image (an image that met its stopping rule
keeps the value it had then), so batching does not change a per-image result.

**Tweedie estimate (decision).** The official code forms the estimate that starts the hard data
consistency with ``(1 - abar) eps`` where the formula (and its own DDIM step) has
``sqrt(1 - abar) eps``. We use the formula (``tweedie="formula"``, default): it is the estimate
the paper states and the one that makes ``z0_hat`` the posterior mean; ``tweedie="code"``
reproduces the code's coefficient in the time-travel estimate for comparison.

**Defaults scaled to our step counts.** The code runs ``N = 500`` DDIM steps of a T = 1000 latent
diffusion (ours: T = 1000 too), hard consistency every 10th step, 5 time-travel steps. With
another ``steps`` the interval and the travel length scale with it (``every = max(1, round(10 N /
500))``, ``travel = max(1, round(5 N / 500))``), so a run keeps the code's number of
consistency solves (about 33) and the same time-travel span in timesteps; the DPS scale
(``0.5 abar_t``), gamma and the optimiser settings are the code's. At the clean end
(``t_prev = -1``: ``abar_prev = 1``, ``sigma = 0``) the resampling is the limit ``z0_y``
(the code's last ``abar_prev`` is ``abar_0``, not 1). ``encode`` is the posterior mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.latent.prior import require_latent
from diffinv.seeding import randn
from diffinv.solvers._common import check_finite, progress, unpack
from diffinv.solvers._latent import (
    LATENT_NEEDS,
    abar,
    ddim,
    ddim_plan,
    forward_op,
    residual_norm,
    tweedie,
)
from diffinv.solvers.base import Solver, register_solver

TWEEDIE = ("formula", "code")


def resample_sigma2(gamma: float, a_t: float, a_prev: float) -> float:
    """``gamma (1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev)``."""
    return gamma * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


def stochastic_resample(z0_y: Tensor, z_prime: Tensor, a_prev: float, sigma2: float,
                        noise: Tensor | None) -> Tensor:
    """ReSample's eq. 9 (module docstring); ``noise`` None gives the mean."""
    v = 1 - a_prev
    if sigma2 <= 0 or v <= 0:
        return z0_y
    mean = (sigma2 * a_prev ** 0.5 * z0_y + v * z_prime) / (sigma2 + v)
    if noise is None:
        return mean
    return mean + (1 / (1 / sigma2 + 1 / v)) ** 0.5 * noise


def optimise(init: Tensor, loss_fn: Callable[[Tensor], Tensor], *, lr: float, iters: int,
             tol: float = 0.0, patience: int = 0) -> tuple[Tensor, list[int]]:
    """AdamW on ``init`` (a batch) minimising the per-image ``loss_fn``; image ``b`` stops when its
    loss is below ``tol`` or (``patience`` > 0) above its value ``patience`` iterations earlier,
    keeping the value it had then. Returns (result, the iteration each image stopped at)."""
    p = init.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=lr)
    out = init.detach().clone()
    B = init.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=init.device)
    stopped = [iters] * B
    history: list[Tensor] = []
    for k in range(iters):
        with torch.enable_grad():
            loss = loss_fn(p)
        lv = loss.detach()
        stop = lv < tol
        if patience and k >= patience:
            stop = stop | (lv > history[k - patience])
        history.append(lv)
        new = stop & ~done
        if bool(new.any()):
            out[new] = p.detach()[new]
            for b in new.nonzero().flatten().tolist():
                stopped[b] = k
            done |= new
        if bool(done.all()):
            return out, stopped
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    out[~done] = p.detach()[~done]
    return out, stopped


def mse_per_image(y: Tensor, ax: Tensor) -> Tensor:
    return (y - ax).flatten(1).pow(2).mean(1)


@register_solver("resample")
class ReSample(Solver):
    """ReSample: latent DPS steps + hard data consistency (pixel / latent optimisation) with
    time travel and stochastic resampling (module docstring)."""

    summary = ("ReSample (latent prior): 500 latent DDIM steps with latent DPS, hard data "
               "consistency every 10th step (pixel then latent optimisation) and stochastic "
               "resampling")
    requires = ()
    needs = LATENT_NEEDS

    def __init__(self, steps: int = 500, scale: float = 0.5, gamma: float = 40.0,
                 every: int | None = None, travel: int | None = None, pixel_lr: float = 1e-2,
                 pixel_iters: int = 2000, pixel_tol: float = 1e-6, latent_lr: float = 5e-3,
                 latent_iters: int = 500, patience: int = 200, final_latent: bool = True,
                 tweedie: str = "formula"):
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise DiffinvError(f"steps must be an integer >= 1, got {steps!r}")
        self.steps = int(steps)
        self.every = int(every) if every is not None else max(1, round(10 * self.steps / 500))
        self.travel = int(travel) if travel is not None else max(1, round(5 * self.steps / 500))
        if self.every < 1 or self.travel < 0:
            raise DiffinvError(f"every must be >= 1 and travel >= 0, got {every}, {travel}")
        if scale < 0 or gamma <= 0 or pixel_lr <= 0 or latent_lr <= 0:
            raise DiffinvError("scale must be >= 0, gamma and the learning rates > 0")
        if min(pixel_iters, latent_iters, patience) < 0:
            raise DiffinvError("iteration counts and patience must be >= 0")
        if tweedie not in TWEEDIE:
            raise DiffinvError(f"tweedie must be one of {TWEEDIE}, got {tweedie!r}")
        self.scale, self.gamma = float(scale), float(gamma)
        self.pixel_lr, self.pixel_iters, self.pixel_tol = float(pixel_lr), int(pixel_iters), \
            float(pixel_tol)
        self.latent_lr, self.latent_iters, self.patience = float(latent_lr), int(latent_iters), \
            int(patience)
        self.final_latent, self.tweedie = bool(final_latent), tweedie

    # -- the hard data-consistency pieces ----------------------------------------------------
    def pixel_step(self, lp: Any, problem: Any, y: Tensor, z0: Tensor) -> tuple[Tensor, list]:
        with torch.no_grad():
            x = lp.decode(z0)
        x, stops = optimise(x, lambda v: mse_per_image(y, forward_op(problem, v)),
                            lr=self.pixel_lr, iters=self.pixel_iters, tol=self.pixel_tol)
        with torch.no_grad():
            return lp.encode(x), stops

    def latent_step(self, lp: Any, problem: Any, y: Tensor, z0: Tensor) -> tuple[Tensor, list]:
        return optimise(z0, lambda v: mse_per_image(y, forward_op(problem, lp.decode(v))),
                        lr=self.latent_lr, iters=self.latent_iters, patience=self.patience)

    def time_travel(self, latent: Any, z: Tensor, plan: list[tuple[int, int]], i: int) -> Tensor:
        """``z0`` estimate after ``travel`` unconditional DDIM steps from ``z`` (at ``plan[i]``'s
        ``t_prev``)."""
        z0 = z
        with torch.no_grad():
            for t, t_prev in plan[i + 1:i + 1 + self.travel]:
                eps = latent.eps(z, t)
                z0 = tweedie(latent, z, t, eps, self.tweedie)
                z = ddim(tweedie(latent, z, t, eps), eps, abar(latent, t_prev), abar(latent, t),
                         0.0, None)
        return z0

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        lp = require_latent(self.name, prior)
        problem = unpack(self, y, physics, prior)
        latent = lp.latent
        plan = ddim_plan(latent.num_timesteps, self.steps)
        n = len(plan)
        third = n // 3
        shape = lp.latent_shape
        z = randn(shape, generators, device=y.device, dtype=y.dtype)
        trace: dict[str, Any] = {"sampler": "ddim", "steps": n, "every": self.every,
                                 "travel": self.travel, "log_energy": [], "hard_dc": []}
        backward = 0
        for i, (t, t_prev) in enumerate(progress(plan, getattr(self, "progress", False),
                                                 self.name, n)):
            index = n - 1 - i
            a_t, a_prev = abar(latent, t), abar(latent, t_prev)
            z_in = z.detach().requires_grad_(True)
            with torch.enable_grad():
                eps = latent.eps(z_in, t)
                z0 = tweedie(latent, z_in, t, eps)
                e = residual_norm(y, forward_op(problem, lp.decode(z0)))
                (g,) = torch.autograd.grad(e.sum(), z_in)
            backward += 1
            trace["log_energy"].append(e.detach().cpu())
            z_prime = ddim(z0.detach(), eps.detach(), a_prev, a_t, 0.0, None) \
                - self.scale * a_t * g
            z_new = z_prime.detach()
            if index % self.every == 0 and index <= 2 * third and i > 0:
                z0_tt = self.time_travel(latent, z_new, plan, i) if t_prev >= 0 else z_new
                kind = "pixel" if index >= third else "latent"
                step = self.pixel_step if kind == "pixel" else self.latent_step
                z0_y, stops = step(lp, problem, y, z0_tt)
                noise = randn(shape, generators, device=y.device, dtype=y.dtype) \
                    if t_prev >= 0 else None
                z_new = stochastic_resample(z0_y.detach(), z_new, a_prev,
                                            resample_sigma2(self.gamma, a_t, a_prev)
                                            if t_prev >= 0 else 0.0, noise)
                trace["hard_dc"].append({"step": i, "kind": kind, "stopped": stops})
            check_finite(self.name, z_new, z, i, t, trace)
            z = z_new
        if self.final_latent:
            z, stops = self.latent_step(lp, problem, y, z)
            trace["final_stopped"] = stops
        with torch.no_grad():
            x = lp.decode(z).clamp(-1, 1)
        trace["backward_nfe"] = backward
        return x, trace
