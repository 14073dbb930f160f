r"""DMPS: Diffusion Model based Posterior Sampling (Meng & Kabashima, 2022) for noisy linear
problems ``y = A x + n``, ``n ~ N(0, sigma_y^2 I)``.

The likelihood ``p(y | x_t)`` is replaced by its closed form under an uninformative prior on
``x_0``, ``x_0 | x_t ~ N(x_t / sqrt(abar_t), (1 - abar_t)/abar_t I)``::

    p~(y | x_t) = N(y; A x_t / sqrt(abar_t), sigma_y^2 I + (1 - abar_t)/abar_t A A^T)

whose score, through the SVD ``A = U diag(s) V^T``, costs no network pass::

    grad log p~ = V [ s / (sqrt(abar_t) (sigma_y^2 + (1 - abar_t)/abar_t s^2))
                      * (U^T y - s (V^T x_t)[:m] / sqrt(abar_t)) ; 0 ]

An instance of the interleaving template with 1000 DDPM ancestral steps: the ancestral mean is
``(x_t + beta_t score(x_t)) / sqrt(alpha_t)``, so the posterior score ``score + lambda grad log p~``
adds ``lambda beta_t / sqrt(alpha_t) grad log p~(y | x_t)`` to the unconditional proposal.
``lam`` (the paper's lambda) defaults to 1; the ``tuned32`` preset (:mod:`diffinv.solvers.presets`,
chosen on validation images) uses 3 (10 for super-resolution, 1 for motion blur).

Deviations: the ancestral step uses the clamped Tweedie estimate (guided-diffusion's
``clip_denoised``), so the prior part equals the score form only where no clamp is active. As in
the paper, the likelihood score is evaluated at the step's input ``x_t``. The official code
(``condition_methods.py``, ``dmps``) evaluates it at the unconditional proposal ``x'``
(``out['sample']``), keeping ``abar_t``. Its configs use ``scale = 1.75`` for every task (SR x4,
Gaussian deblur, denoising; FFHQ 256, sigma_y = 0.05). Our default ``lam = 1`` is the exact
posterior score of the approximation. At 32x32 DMPS stays well below DDRM and PiGDM on inpainting
and super-resolution even tuned (18.0 vs 21.5 dB on random inpainting, validation images). Its
likelihood takes ``x_t/sqrt(abar_t)`` as the estimate of ``x_0`` with variance ``(1 - abar_t)/abar_t``,
so the guidance is weak until the last steps; a larger lambda, which helps at sigma 0.05, loses
6.9 dB at sigma 0.01 (``benchmarks/tune_linear_picks.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.solvers._common import gaussian_sigma, operator_svd
from diffinv.solvers.base import register_solver
from diffinv.solvers.interleave import Context, Interleaved, Step


def dmps_likelihood_score(x_t: Tensor, y: Tensor, svd, abar: float, sigma_y: float) -> Tensor:
    """``grad_{x_t} log p~(y | x_t)`` of DMPS (see the module docstring)."""
    s = svd.singulars().to(x_t)
    ra = abar ** 0.5
    v2 = (1 - abar) / abar
    den = sigma_y ** 2 + v2 * s * s
    coef = torch.where(den > 0, s / (ra * torch.where(den > 0, den, torch.ones_like(den))),
                       torch.zeros_like(den))
    res = svd.ut(y) - s * svd.vt(x_t)[:, : svd.m] / ra
    return svd.v(svd.add_zeros(coef * res))


@register_solver("dmps")
class DMPS(Interleaved):
    """Ancestral steps + the closed-form (SVD) likelihood score of DMPS."""

    summary = "DMPS: ancestral steps + closed-form likelihood score through the SVD"
    requires = ("linear", "svd")

    def __init__(self, lam: float = 1.0, steps: int = 1000, sampler: str = "ddpm",
                 eta: float = 0.0, spacing: str = "uniform"):
        super().__init__(steps, sampler, eta, spacing)
        self.lam = float(lam)

    def prepare(self, ctx: Context) -> None:
        ctx.data["svd"] = operator_svd(ctx.problem, ctx.y)
        ctx.data["sigma_y"] = gaussian_sigma(self, ctx.problem.noise)

    def guide(self, ctx: Context, step: Step) -> Tensor:
        g = dmps_likelihood_score(step.x_t.detach(), ctx.y, ctx.data["svd"], step.abar,
                                  ctx.data["sigma_y"])
        return step.x_prev + self.lam * (1 - step.alpha) / step.alpha ** 0.5 * g
