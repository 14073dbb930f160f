r"""MCG: Manifold Constrained Gradients (Chung, Sim, Ryu, Ye; NeurIPS 2022), as DPS's code runs it.

An instance of the interleaving template: the DPS step of :mod:`diffinv.solvers.dps` followed by a
projection onto the noised measurement set (MCG paper, Algorithm 1)::

    x''      = x' - s * grad_{x_i} ||y - A(x0_hat(x_i))||
    y_{i-1}  = sqrt(abar_{i-1}) y + sqrt(1 - abar_{i-1}) A z,   z ~ N(0, I)
    x_{i-1}  = x'' + A^+ (y_{i-1} - A x'')

``A^+`` comes from the operator's SVD (singular values below ``pinv_eps`` are treated as zero), so
MCG needs a linear operator with an SVD; for inpainting the projection is the paper's
``(I - P^T P) x'' + P^T y_{i-1}``.

Deviations: the gradient is that of the unsquared norm with DPS's per-task scale (DPS's
``mcg`` conditioning method; the MCG paper writes ``alpha * grad ||W(y - H x0_hat)||^2``); the
measurement is noised to the output's level ``i-1`` (paper) whereas DPS's code noises it to level
``i``. The measurement is noised through the operator, ``A z`` with ``z`` in image space, as ILVR
does; DPS's code adds ``N(0, I)`` in measurement space instead. The two agree for inpainting
masks (``A A^T = I``) and differ in scale for average-pooling SR. With a noisy ``y`` the
projection imposes the measurement's noise (a known weakness of MCG on noisy problems, which the
DPS paper points out): on blur, whose singular values reach far below the noise level, the
default ``pinv_eps = 1e-3`` lets ``A^+`` amplify that noise up to 1000-fold, and the ``tuned32``
preset truncates at 0.3 instead (:mod:`diffinv.solvers.presets`; ``benchmarks/tune_linear_picks.md``).
Defaults: DPS's official per-task scales (``scale=None``); the ``tuned32`` preset has the scales
chosen on validation images. The MCG authors' own repository (HJ-harry/MCG_diffusion) was not
checked; DPS's ``mcg`` method is the reference here.
"""

from __future__ import annotations

from torch import Tensor

from diffinv.solvers._common import operator_svd
from diffinv.solvers.base import register_solver
from diffinv.solvers.dps import _DPSBase
from diffinv.solvers.interleave import Context, Step, noised_measurement, project


@register_solver("mcg")
class MCG(_DPSBase):
    """DPS gradient step + projection onto {A x = y_{i-1}}."""

    summary = "MCG: DPS step + projection onto the noised measurement set (linear, SVD)"
    requires = ("linear", "svd")

    def __init__(self, scale=None, steps: int = 1000, sampler: str = "ddpm", eta: float = 0.0,
                 spacing: str = "uniform", pinv_eps: float = 1e-3):
        super().__init__(scale, steps, sampler, eta, spacing)
        self.pinv_eps = float(pinv_eps)

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        ctx.data["svd"] = operator_svd(ctx.problem, ctx.y)

    def guide(self, ctx: Context, step: Step) -> Tensor:
        x = super().guide(ctx, step)
        target = noised_measurement(ctx.y, ctx.problem, step.abar_prev, step.generators)
        return project(x, target, ctx.problem, ctx.data["svd"], self.pinv_eps)
