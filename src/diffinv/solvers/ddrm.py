r"""DDRM: Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song; NeurIPS 2022).

Work in the SVD ``A = U diag(s) V^T`` and the variance-exploding scaling ``xb_t = x_t/sqrt(abar_t)``,
``sigma_t = sqrt((1 - abar_t)/abar_t)``; coordinates ``c = V^T xb``, ``yb = diag(s)^+ U^T y``.
With ``x0 = V^T x0_hat(x_t)`` (Tweedie) and the next level ``sigma' = sigma_{t_prev}``
(0 after the last step), each coordinate i is drawn as (paper, eq. 7-8)::

    s_i = 0:                   N(x0_i + sqrt(1 - eta^2) sigma' (c_i - x0_i)/sigma_t,     eta^2 sigma'^2)
    sigma' < sigma_y / s_i:    N(x0_i + sqrt(1 - eta^2) sigma' (yb_i - x0_i)/(sigma_y/s_i), eta^2 sigma'^2)
    sigma' >= sigma_y / s_i:   N((1 - eta_b) x0_i + eta_b yb_i,  sigma'^2 - eta_b^2 sigma_y^2/s_i^2)

and the start ``c_T ~ N(yb_i, sigma_T^2 - sigma_y^2/s_i^2)`` where ``s_i sigma_T > sigma_y``,
``N(0, sigma_T^2)`` elsewhere. ``x_{t_prev} = sqrt(abar_{t_prev}) V c'``; the output is the last
iterate (``sigma' = 0``: the final Tweedie estimate, made consistent with ``y`` where
``sigma_y = 0``). 20 steps on the timesteps ``0, 50, ..., 950`` (the official ``skip`` grid),
``eta = 0.85``, ``eta_b = 1`` (official defaults). On the embedded 32x32 priors 100 steps did
better (best mean on 6 of 7 validation tasks, ``benchmarks/tune_linear_picks.md``): the ``tuned32``
preset (:mod:`diffinv.solvers.presets`) uses 100 steps and ``eta = 1`` (0.85 for motion blur).

Deviations from the official code (``functions/denoising.py``, ``efficient_generalized_steps``):

* the Tweedie estimate is the prior's (clamped to [-1, 1] when the prior clips; the official code
  does not clip inside the loop, only when saving images). The null-space update then uses
  ``(c - x0)/sigma_t``, which equals the official ``V^T eps`` only where no clamp is active;
* the official initial ``x_T`` divides ``V c_T`` by ``sigma_T`` rather than multiplying it by
  ``sqrt(abar_T)`` (a factor ``sqrt(1 - abar_T)`` apart);
* ties ``sigma' = sigma_y / s_i`` go to the ``>=`` case here (paper, eq. 8). The code uses strict
  inequalities and sends a tie to the null-space formula. That only happens at the last step of a
  noiseless problem: the code then returns ``x0_hat`` on the observed coordinates, and this module
  returns ``yb``, i.e. exact consistency with ``y``;
* the two fresh-noise draws are organised differently (the same distribution, different streams).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError
from diffinv.seeding import randn
from diffinv.solvers._common import (
    check_finite,
    gaussian_sigma,
    operator_svd,
    progress,
    unpack,
)
from diffinv.solvers.base import Solver, register_solver


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    ok = b > 0
    return torch.where(ok, a / torch.where(ok, b, torch.ones_like(b)), torch.zeros_like(a))


def ddrm_init(yb: Tensor, s: Tensor, sigma_T: float, sigma_y: float, z: Tensor) -> Tensor:
    """Coefficients ``c_T`` (first ``m`` observed, the rest null space) of the DDRM start."""
    m = s.shape[1]
    obs = s * sigma_T > sigma_y
    var = (sigma_T ** 2 - _safe_div(torch.full_like(s, sigma_y ** 2), s * s)).clamp_min(0)
    head = torch.where(obs, yb + var.sqrt() * z[:, :m], sigma_T * z[:, :m])
    return torch.cat([head, sigma_T * z[:, m:]], dim=1)


def ddrm_update(c: Tensor, x0: Tensor, yb: Tensor, s: Tensor, sigma_t: float, sigma_next: float,
                sigma_y: float, eta: float, eta_b: float, z: Tensor,
                eta_obs: float | None = None) -> Tensor:
    """One DDRM transition of the coefficients (see the module docstring); ``c``, ``x0``, ``z``
    are ``(B, n)``, ``yb`` and ``s`` ``(B or 1, m)``. ``eta_obs`` (default ``eta``) is the eta of
    the observed coordinates less noisy than ``y`` (GibbsDDRM sets it apart from the null
    space's)."""
    m = s.shape[1]
    k = (1 - eta ** 2) ** 0.5
    eta_o = eta if eta_obs is None else eta_obs
    k_o = (1 - eta_o ** 2) ** 0.5
    # null space (s = 0, including the coordinates beyond m)
    null = x0 + k * sigma_next * (c - x0) / sigma_t + eta * sigma_next * z
    x_h, z_h = x0[:, :m], z[:, :m]
    s = s.expand_as(x_h)
    yb = yb.expand_as(x_h)
    level = _safe_div(torch.full_like(s, sigma_y), s)  # sigma_y / s_i (0 where s = 0)
    less = x_h + k_o * sigma_next * _safe_div(yb - x_h, level) + eta_o * sigma_next * z_h
    var = (sigma_next ** 2 - eta_b ** 2 * level ** 2).clamp_min(0)
    more = (1 - eta_b) * x_h + eta_b * yb + var.sqrt() * z_h
    head = torch.where(s > 0, torch.where(sigma_next < level, less, more), null[:, :m])
    return torch.cat([head, null[:, m:]], dim=1)


@register_solver("ddrm")
class DDRM(Solver):
    """DDRM in the SVD domain with eta and eta_b."""

    summary = "DDRM: 20 SVD-domain steps, eta = 0.85, eta_b = 1 (linear, SVD, Gaussian noise)"
    requires = ("linear", "svd")

    def __init__(self, steps: int = 20, eta: float = 0.85, eta_b: float = 1.0,
                 spacing: str = "leading"):
        if not (0 <= eta <= 1 and 0 <= eta_b <= 1):
            raise DiffinvError(f"eta and eta_b must lie in [0, 1]; got {eta}, {eta_b}")
        self.steps, self.eta, self.eta_b, self.spacing = int(steps), float(eta), float(eta_b), spacing

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        problem = unpack(self, y, physics, prior)
        sigma_y = gaussian_sigma(self, problem.noise)
        svd = operator_svd(problem, y)
        s = svd.singulars().to(y)
        yb = _safe_div(svd.ut(y), s)
        shape = problem.image_shape[1:]
        dev, dtype = y.device, y.dtype
        ab = prior.schedule.alpha_bar
        ts = spaced_timesteps(prior.num_timesteps, self.steps, self.spacing)

        def sig(t: int) -> float:
            return 0.0 if t < 0 else float(((1 - ab[t]) / ab[t]).sqrt())

        def draw() -> Tensor:
            return randn(shape, generators, device=dev, dtype=dtype).reshape(y.shape[0], -1)

        c = ddrm_init(yb, s, sig(ts[0]), sigma_y, draw())
        x = float(ab[ts[0]]) ** 0.5 * svd.v(c)
        for i, t in enumerate(progress(ts, getattr(self, "progress", False), self.name, len(ts))):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            with torch.no_grad():
                x0 = svd.vt(prior.x0(x, t))
                c = svd.vt(x) / float(ab[t]) ** 0.5
                c = ddrm_update(c, x0, yb, s, sig(t), sig(t_prev), sigma_y, self.eta,
                                self.eta_b, draw() if t_prev >= 0 else torch.zeros_like(c))
                x_new = (float(ab[t_prev]) ** 0.5 if t_prev >= 0 else 1.0) * svd.v(c)
            check_finite(self.name, x_new, x, i, t)
            x = x_new
        return x, {"steps": len(ts), "backward_nfe": 0}
