r"""The interleaving template (Algorithm 1 of the tutorial): a reverse diffusion loop whose every
unconditional step is followed by a guidance step.

For the reverse rows ``t = t_N > ... > t_1`` (``t_prev`` the next row, ``-1`` after the last)::

    x_T ~ N(0, I)
    for t in rows:
        (eps, v) = net(x_t, t);  x0_hat = clamp((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t))
        x'  = unconditional step(x_t, x0_hat, eps)          # DDPM ancestral or DDIM(eta)
        x_{t_prev} = guide(x', x_t, x0_hat, eps, t)          # the method
    return x_0

* ``sampler="ddpm"``: ``x' = c1_t x0_hat + c2_t x_t + sigma_t z`` (Ho et al. 2020, eq. 6-7; the
  prior's variance type; no noise at the last row), on all T rows or on a respaced schedule
  (Nichol & Dhariwal 2021) when ``steps < T``;
* ``sampler="ddim"``: ``x' = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps + s z``,
  ``s = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)`` (Song et al. 2021,
  eq. 12), on ``steps`` spaced timesteps;
* ``sampler="dpmpp2m"``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), the multistep
  second-order solver of the probability-flow ODE in its data-prediction form, on ``steps`` spaced
  timesteps. With ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``, ``lambda = log(alpha/sigma)``
  and ``h = lambda_prev - lambda_t``::

      x' = (sigma_prev / sigma_t) x_t - alpha_prev (exp(-h) - 1) D
      D  = x0_hat                                       (first step)
      D  = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_last,    r = h_last / h   (later steps)

  where ``x0_hat_last`` is the previous step's estimate; the step into the clean end
  (``abar_prev = 1``, ``h = inf``) is ``x' = x0_hat`` (first order there, the usual
  "lower order final" choice). Deterministic: ``eta`` is ignored. With few steps use
  ``spacing="logsnr"`` (:func:`logsnr_timesteps`): on uniformly spaced timesteps the last steps
  span large log-SNR intervals of very unequal length and the multistep extrapolation loses its
  accuracy (the closed-form test shows it).

A method is a subclass that implements :meth:`Interleaved.guide` (and optionally
:meth:`Interleaved.prepare`): a gradient step through the Tweedie estimate (DPS, MCG, PiGDM; they
set ``needs_grad = True`` so that ``x_t`` enters the network with ``requires_grad``), a projection
onto the (noised) measurement set (ILVR, MCG) or a closed-form likelihood score (DMPS). No method
has its own copy of the loop.

Randomness: ``x_T`` and every ``z`` come from the per-image generators (drawn on the CPU), and a
method's own draws (noised measurements) too, so batching never changes a per-image result.
If an iterate becomes non-finite the loop stops and raises
:class:`~diffinv.solvers._common.SolverDivergedError` carrying the last finite iterate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.seeding import randn
from diffinv.solvers._common import Problem, check_finite, progress, unpack
from diffinv.solvers.base import Solver

SAMPLERS = ("ddpm", "ddim", "dpmpp2m")


@dataclass
class Step:
    """Everything a guidance step may use at one iteration of the template."""

    index: int                 # 0 .. steps-1
    t: int                     # original diffusion timestep of x_t
    t_prev: int                # original timestep of the output (-1: the clean end)
    abar: float                # abar at t
    abar_prev: float           # abar at t_prev (1 at the clean end)
    alpha: float               # 1 - beta of the working schedule row (abar / abar_prev)
    x_t: Tensor                # input of the step (requires grad when the method needs it)
    x0: Tensor                 # Tweedie estimate from x_t (in the graph when x_t requires grad)
    eps: Tensor                # network noise prediction at (x_t, t) (in the graph likewise)
    x_prev: Tensor             # the unconditional proposal x' (detached)
    generators: Sequence[torch.Generator]
    last: bool                 # whether this is the final step


@dataclass
class Context:
    """Per-run state a method builds in :meth:`Interleaved.prepare`."""

    y: Tensor
    problem: Problem
    prior: Any
    data: dict[str, Any] = field(default_factory=dict)
    backward_nfe: int = 0


class Interleaved(Solver):
    """Base class of the interleaved methods (see the module docstring)."""

    needs_grad = False
    default_steps = 1000
    default_sampler = "ddpm"

    def __init__(self, steps: int | None = None, sampler: str | None = None, eta: float = 0.0,
                 spacing: str = "uniform"):
        self.steps = int(steps if steps is not None else self.default_steps)
        self.sampler = sampler or self.default_sampler
        if self.sampler not in SAMPLERS:
            raise UnknownNameError("sampler", self.sampler, SAMPLERS)
        if self.steps < 1:
            raise DiffinvError(f"steps must be >= 1, got {steps}")
        self.eta = float(eta)
        if not 0.0 <= self.eta <= 1.0:
            raise DiffinvError(f"eta must lie in [0, 1], got {eta}")
        self.spacing = spacing

    # -- hooks -----------------------------------------------------------------------------
    def prepare(self, ctx: Context) -> None:
        """Build per-run state (energies, SVD factors) into ``ctx.data``."""

    def guide(self, ctx: Context, step: Step) -> Tensor:
        """Return ``x_{t_prev}`` from the unconditional proposal ``step.x_prev``."""
        raise NotImplementedError

    def unpack(self, y: Tensor, physics: Any, prior: Any) -> Problem:
        """What the method reads from the measurement (default: the operator, its parameters and
        the noise model, :func:`~diffinv.solvers._common.unpack`). Blind methods (FastEM) and
        CL-DPS, which reads ``y`` alone, override it."""
        return unpack(self, y, physics, prior)

    def outputs(self, ctx: Context) -> dict[str, Any]:
        """Extra entries for the trace at the end of the run (e.g. an estimated kernel)."""
        return {}

    # -- the loop ----------------------------------------------------------------------------
    def _rows(self, prior: Any) -> tuple[Any, list[tuple[int, int, int]]]:
        """(working prior, [(row, t, t_prev)]) where ``row`` indexes the working schedule."""
        T = prior.num_timesteps
        if self.steps > T:
            raise DiffinvError(f"{self.name}: steps {self.steps} exceed the prior's T = {T}")
        if self.sampler == "ddpm":
            work = prior if self.steps == T else prior.respaced(
                spaced_timesteps(T, self.steps, self.spacing))
            ts = [int(v) for v in work.schedule.timesteps.tolist()]
            rows = list(range(work.num_timesteps - 1, -1, -1))
            return work, [(r, ts[r], ts[r - 1] if r > 0 else -1) for r in rows]
        ts = (logsnr_timesteps(prior.schedule.alpha_bar, self.steps) if self.spacing == "logsnr"
              else spaced_timesteps(T, self.steps, self.spacing))
        return prior, [(t, t, ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)]

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        problem = self.unpack(y, physics, prior)
        ctx = Context(y=y, problem=problem, prior=prior)
        self.prepare(ctx)
        work, plan = self._rows(prior)
        abar_full = prior.schedule.alpha_bar
        shape = problem.image_shape[1:]
        dev, dtype = y.device, y.dtype
        x = randn(shape, generators, device=dev, dtype=dtype)
        trace: dict[str, Any] = {"sampler": self.sampler, "steps": len(plan)}
        history: dict[str, Any] = {}  # DPM-Solver++(2M): the last x0_hat and step h
        try:
            for i, (row, t, t_prev) in enumerate(progress(plan, getattr(self, "progress", False),
                                                          self.name, len(plan))):
                last = i == len(plan) - 1
                x_in = x.detach().requires_grad_(self.needs_grad)
                with torch.set_grad_enabled(self.needs_grad):
                    eps, v = work.net_out(x_in, row)
                    x0 = work.x0_from_eps(x_in, row, eps)
                    check_finite(self.name, x0.detach(), x, i, t, trace)
                    xd, x0d = x_in.detach(), x0.detach()
                    if self.sampler == "ddpm":
                        x_prev = work.posterior_mean(x0d, xd, row)
                        if row > 0:
                            z = randn(shape, generators, device=dev, dtype=dtype)
                            logvar = work.posterior_log_variance(
                                xd, row, None if v is None else v.detach())
                            x_prev = x_prev + (0.5 * logvar).exp() * z
                    elif self.sampler == "dpmpp2m":
                        x_prev = dpmpp2m_update(xd, x0d, float(abar_full[t]),
                                                float(abar_full[t_prev]) if t_prev >= 0 else 1.0,
                                                history)
                    else:
                        z = (randn(shape, generators, device=dev, dtype=dtype)
                             if self.eta > 0 and t_prev >= 0 else None)
                        x_prev = work.ddim_update(xd, t, t_prev, x0d, self.eta, z)
                    ab = float(abar_full[t])
                    ab_prev = float(abar_full[t_prev]) if t_prev >= 0 else 1.0
                    step = Step(i, t, t_prev, ab, ab_prev, ab / ab_prev, x_in, x0, eps,
                                x_prev, generators, last)
                    x_new = self.guide(ctx, step).detach()
                check_finite(self.name, x_new, x, i, t, trace)
                x = x_new
        finally:
            if work is not prior:
                prior._nfe += work.nfe  # count the respaced prior's network calls
        trace["backward_nfe"] = ctx.backward_nfe
        trace.update({k: v for k, v in ctx.data.items() if k.startswith("log_")})
        trace.update(self.outputs(ctx))
        return x, trace


def logsnr_timesteps(alpha_bar: Tensor, steps: int) -> list[int]:
    """Decreasing timesteps whose log-SNR ``lambda_t = log(sqrt(abar_t / (1 - abar_t)))`` is as
    close as the integer grid allows to uniform between ``lambda_{T-1}`` and ``lambda_0`` (the
    spacing DPM-Solver recommends for low-resolution pixel models, Lu et al. 2022, sec. 3.3).
    Always holds ``T - 1`` and ``0``; near ``t = 0``, where the grid is coarse in ``lambda``, two
    targets can round to one timestep, so there may be fewer than ``steps``."""
    T = alpha_bar.numel()
    if not 1 <= steps <= T:
        raise DiffinvError(f"steps must lie in 1..{T}, got {steps}")
    ab = alpha_bar.double()
    lam = 0.5 * torch.log(ab / (1 - ab))
    if steps == 1:
        return [T - 1]
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    ts = {int((lam - v).abs().argmin()) for v in targets} | {0, T - 1}
    return sorted(ts, reverse=True)


def dpmpp2m_update(x_t: Tensor, x0: Tensor, abar: float, abar_prev: float,
                   history: dict[str, Any]) -> Tensor:
    """One DPM-Solver++(2M) step from ``abar`` to ``abar_prev`` (module docstring); ``history``
    carries ``x0_hat`` and ``h`` of the previous step between calls (empty before the first)."""
    if abar_prev >= 1.0:
        history.clear()
        return x0
    lam = 0.5 * math.log(abar / (1 - abar))
    lam_prev = 0.5 * math.log(abar_prev / (1 - abar_prev))
    h = lam_prev - lam
    if "x0" in history:
        r = history["h"] / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * history["x0"]
    else:
        d = x0
    history["x0"], history["h"] = x0, h
    ratio = math.sqrt((1 - abar_prev) / (1 - abar))
    return ratio * x_t - math.sqrt(abar_prev) * math.expm1(-h) * d


def noised_measurement(y: Tensor, problem: Problem, abar: float,
                       generators: Sequence[torch.Generator]) -> Tensor:
    r"""``y_s = sqrt(abar) y + sqrt(1 - abar) A z`` with ``z ~ N(0, I)`` in image space: the
    measurement of an image diffused to noise level ``abar`` (ILVR's ``phi_N(y_{t-1})``, MCG's
    ``y_{i-1}``); ``y`` itself at ``abar = 1``."""
    if abar >= 1.0:
        return y
    z = randn(problem.image_shape[1:], generators, device=y.device, dtype=y.dtype)
    return abar ** 0.5 * y + (1 - abar) ** 0.5 * problem.operator(z, **problem.params)


def project(x: Tensor, target: Tensor, problem: Problem, svd: Any, eps: float = 0.0) -> Tensor:
    r"""``x + A^+ (target - A x)``: the orthogonal projection of ``x`` onto ``{x : A x = target}``
    when ``A`` has full row rank (singular values ``<= eps`` are treated as zero)."""
    return x + svd.pinv(target - problem.operator(x, **problem.params), eps)
