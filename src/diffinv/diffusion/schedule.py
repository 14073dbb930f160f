"""Variance-preserving (VP) noise schedules and timestep respacing.

Forward process (Ho et al. 2020, eq. 4): ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with
``abar_t = prod_{s<=t} (1 - beta_s)``, t = 0..T-1 (0-based, as guided-diffusion).

The posterior of one step (eq. 6-7):
``q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, beta~_t)`` with
``c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t)``, ``c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)``,
``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (abar_{-1} = 1).

All tables are float64 and are indexed with integer timesteps; :meth:`VPSchedule.at` gathers a
table at a batch of timesteps as a float32 tensor broadcastable against images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from diffinv.errors import DiffinvError


@dataclass(frozen=True, eq=False)
class VPSchedule:
    """A discrete VP schedule given by its betas; ``timesteps[i]`` is the original timestep of row i.

    A respaced schedule (:meth:`respace`) keeps a subset of the original timesteps and recomputes
    ``beta_i = 1 - abar[t_i] / abar[t_{i-1}]`` so that ``abar`` is unchanged at the kept steps
    (Nichol & Dhariwal 2021, sec. 4). The network is always called with the original timestep.
    """

    betas: torch.Tensor
    timesteps: torch.Tensor = field(default=None)  # type: ignore[assignment]
    kind: str = "custom"

    def __post_init__(self) -> None:
        b = torch.as_tensor(self.betas, dtype=torch.float64)
        if b.ndim != 1 or len(b) == 0:
            raise DiffinvError("betas must be a non-empty 1-D sequence")
        if not torch.all((b > 0) & (b < 1)):
            raise DiffinvError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", b)
        ts = (
            torch.arange(len(b))
            if self.timesteps is None
            else torch.as_tensor(self.timesteps).long()
        )
        if ts.shape != b.shape:
            raise DiffinvError("timesteps and betas must have the same length")
        object.__setattr__(self, "timesteps", ts)
        alphas = 1.0 - b
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alpha_bar", abar)
        object.__setattr__(self, "alpha_bar_prev", abar_prev)
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)
        object.__setattr__(self, "posterior_variance", post_var)
        # log of beta~ with its t=0 value (0) replaced by beta~_1, as guided-diffusion does.
        clipped = torch.cat([post_var[1:2], post_var[1:]]) if len(b) > 1 else b.clone()
        object.__setattr__(self, "posterior_log_variance_clipped", torch.log(clipped))
        object.__setattr__(self, "posterior_mean_coef1", b * abar_prev.sqrt() / (1.0 - abar))
        object.__setattr__(
            self, "posterior_mean_coef2", (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)
        )

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> VPSchedule:
        """Linear betas (Ho et al. 2020); both ends scaled by 1000/T as guided-diffusion does."""
        scale = 1000.0 / T
        return cls(
            torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64),
            kind="linear",
        )

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> VPSchedule:
        """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): abar(t) = cos^2(((t/T)+s)/(1+s) pi/2)."""

        def f(t: float) -> float:
            return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64), kind="cosine")

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> VPSchedule:
        if name == "linear":
            return cls.linear(T)
        if name == "cosine":
            return cls.cosine(T)
        from diffinv.errors import UnknownNameError

        raise UnknownNameError("schedule", name, ["linear", "cosine"])

    # -- properties ---------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def respace(self, keep: Sequence[int]) -> VPSchedule:
        """Keep the rows ``keep`` (indices into this schedule, any order) -> a shorter schedule."""
        idx = sorted({int(k) for k in keep})
        if not idx or idx[0] < 0 or idx[-1] >= self.num_steps:
            raise DiffinvError(f"respacing indices must lie in 0..{self.num_steps - 1}")
        abar = self.alpha_bar[idx]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return VPSchedule(
            1.0 - abar / prev, timesteps=self.timesteps[idx], kind=f"{self.kind}-respaced"
        )

    def at(
        self,
        table: torch.Tensor,
        t: torch.Tensor | int,
        ndim: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``table[t]`` of shape (B, 1, ..., 1) (``ndim`` dims), cast to ``dtype`` on ``device``."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        return table[t].reshape(-1, *([1] * (ndim - 1))).to(device=device, dtype=dtype)


def spaced_timesteps(T: int, steps: int, spacing: str = "uniform") -> list[int]:
    """Timesteps for a ``steps``-step sampler, in decreasing order.

    * ``"leading"``: ``arange(steps) * (T // steps)`` (DDIM / diffusers' leading spacing); for
      T = 1000, steps = 3 this is 666, 333, 0, the grid of DMPlug's R(z).
    * ``"uniform"``: ``round(linspace(0, T - 1, steps))``, always including T - 1 and 0.
    * ``"trailing"``: ``round(arange(T, 0, -T/steps)) - 1`` (ends at T - 1).
    * ``"quad"``: ``T - 1 - floor(sqrt(linspace(0, T^2, steps)))``, the last one 0 (DiffPIR's
      ``skip_type="quad"``): from T - 1, dense near the clean end; a repeated value (possible
      only when ``steps`` approaches T) is dropped.
    """
    if not 1 <= steps <= T:
        raise DiffinvError(f"steps must lie in 1..{T}, got {steps}")
    if spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)]
    elif spacing == "uniform":
        ts = sorted({round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)})
    elif spacing == "trailing":
        ts = sorted({round(T - i * T / steps) - 1 for i in range(steps)})
    elif spacing == "quad":
        import math

        ts = sorted({max(T - 1 - math.isqrt(round(i * T * T / max(steps - 1, 1))), 0)
                     for i in range(steps)})
    else:
        from diffinv.errors import UnknownNameError

        raise UnknownNameError("timestep spacing", spacing,
                               ["leading", "uniform", "trailing", "quad"])
    return ts[::-1]
