r"""PnP-Flow (Martin, Gagneux, Hagemann, Steidl: "PnP-Flow: Plug-and-play image restoration with
flow matching", ICLR 2025): a guided sampler for flow-matching priors.

In our convention (:mod:`diffinv.flow.prior`: source at t = 0, data at t = 1) with times
``t_n = n / N``, ``n = 0 .. N - 1``, each iteration is a gradient step on the data fidelity, a
re-noising to time ``t_n`` with a fresh source draw, and the flow's denoiser::

    z_n  = x_n - gamma_n grad F(x_n),               F(x) = 1/2 ||A(x) - y||^2 (per image),
    zt_n = t_n z_n + (1 - t_n) x0_n,                 x0_n ~ source (seeded per image),
    x_{n+1} = mean over m draws of D(zt_n, t_n),     D(x, t) = x + (1 - t) v(x, t) (clamped),

with ``gamma_n = lr (1 - t_n)^alpha``. The output is ``x_N``. The network is never
differentiated (F's gradient goes through the operator only), so an iteration costs ``draws``
forward passes. At ``t_0 = 0`` the interpolation is the source draw alone, so the starting point
does not matter (``x_0 = 0``).

Choices: ``F`` is the plain half squared residual (Gaussian noise of any level; no sigma
weighting), the step rule and averaging over ``draws`` re-noisings follow the method's
description (the step-size exponent ``alpha`` and ``lr`` are per-task hyper-parameters there:
tune them on validation images); the source draws come from the prior's own source, so a
restricted-source prior re-noises inside its subspace. It needs a flow prior (a denoiser at flow
time t and a source) and refuses a diffusion prior by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.solvers._common import check_finite, progress, unpack
from diffinv.solvers.base import Solver, register_solver


def _number(value: Any, name: str, *, positive: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (value > 0 if positive else value >= 0) or value != value:
        raise DiffinvError(f"{name} must be a number {'> 0' if positive else '>= 0'}, got "
                           f"{value!r}")
    return float(value)


@register_solver("pnp-flow")
class PnPFlow(Solver):
    """PnP-Flow (Martin et al., ICLR 2025) on a flow prior (module docstring).

    Parameters: ``steps`` (N), ``lr`` and ``alpha`` (``gamma_n = lr (1 - t_n)^alpha``),
    ``draws`` (re-noisings averaged per iteration).
    """

    summary = ("PnP-Flow (flow priors): gradient step on ||y - A x||^2/2, re-noise to time t, "
               "flow denoiser x + (1 - t) v")
    requires = ()
    needs = ("a flow-matching prior",)
    progress: bool = False

    def __init__(self, steps: int = 100, lr: float = 1.0, alpha: float = 0.5, draws: int = 1):
        for name, v in (("steps", steps), ("draws", draws)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DiffinvError(f"{name} must be an integer >= 1, got {v!r}")
        self.steps, self.draws = steps, draws
        self.lr = _number(lr, "lr", positive=True)
        self.alpha = _number(alpha, "alpha", positive=False)

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        if not (callable(getattr(prior, "denoise", None)) and hasattr(prior, "source")):
            raise DiffinvError(f"solver 'pnp-flow' needs a flow-matching prior (a denoiser at "
                               f"flow time t and a source); {getattr(prior, 'name', '?')!r} is "
                               f"a {type(prior).__name__}")
        p = unpack(self, y, physics, prior)
        x = torch.zeros(p.image_shape, device=y.device, dtype=y.dtype)
        residual: list[Tensor] = []
        for n in progress(range(self.steps), self.progress, "pnp-flow", self.steps):
            t = n / self.steps
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                f = 0.5 * (p.operator(xg, **p.params) - y).flatten(1).square().sum(1)
                (grad,) = torch.autograd.grad(f.sum(), xg)
            residual.append(f.detach().cpu())
            z = x - self.lr * (1 - t) ** self.alpha * grad
            acc = torch.zeros_like(z)
            with torch.no_grad():
                for _ in range(self.draws):
                    x0 = prior.source.sample(generators, device=y.device, dtype=y.dtype)
                    acc += prior.denoise(t * z + (1 - t) * x0, t)
            x_new = acc / self.draws
            check_finite(self.name, x_new, x, n, None, {"log_fidelity": residual})
            x = x_new
        return x, {"log_fidelity": torch.stack(residual), "steps": self.steps,
                   "draws": self.draws, "lr": self.lr, "alpha": self.alpha}
