r"""ILVR: Iterative Latent Variable Refinement (Choi, Kim, Jeong, Gwon, Yoon; ICCV 2021) for
super-resolution.

An instance of the interleaving template with DDPM ancestral steps; after each step
(paper, Algorithm 1)::

    x'       ~ p(x_{t-1} | x_t)                                  (unconditional step)
    y_{t-1}  ~ q(y_{t-1} | y)                                    (the reference, noised)
    x_{t-1}  = phi_N(y_{t-1}) + (I - phi_N)(x')

with the low-pass filter ``phi_N = up(down(.))``. For average-pooling SR by ``N`` the operator is
``down`` and its pseudo-inverse (nearest upsampling) is ``up``, so ``phi_N = A^+ A`` and, with the
low-resolution measurement ``y`` and ``phi_N(y_{t-1}) = A^+(sqrt(abar_{t-1}) y +
sqrt(1 - abar_{t-1}) A z)``, the update is the projection ``x' + A^+(y_{t-1} - A x')``.
Refinement runs while ``t >= stop_t`` (ILVR's conditioning range; 0 = every step).

Deviations: ILVR's code uses a bicubic resizer for ``down``/``up``; here ``phi_N`` is the
operator's own ``A^+ A`` through its SVD, so ILVR accepts only downsampling operators with an SVD
(``sr-avgpool``); the measurement noise is ignored (ILVR is a noiseless method). As in the paper
(Algorithm 1), the reference is noised to the output's level ``t-1`` (``abar_prev``; ``y`` itself
at the last step). The official ``p_sample_loop_progressive`` noises it to the input's level ``t``
(``q_sample(ref, t)``) and refines only while ``t > range_t``; with its default ``range_t = 0`` it
therefore skips the last step. Here ``stop_t = 0`` refines every step, the last one included, and
a code setting ``range_t = r`` corresponds to ``stop_t = r + 1``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.solvers._common import operator_svd
from diffinv.solvers.base import register_solver
from diffinv.solvers.interleave import Context, Interleaved, Step, noised_measurement, project


@register_solver("ilvr")
class ILVR(Interleaved):
    """Ancestral steps + low-pass replacement by the noised low-resolution reference."""

    summary = "ILVR: low-pass projection onto the noised reference (SR by average pooling)"
    requires = ("linear", "svd")
    operators = ("sr-avgpool",)

    def __init__(self, steps: int = 1000, stop_t: int = 0, sampler: str = "ddpm",
                 eta: float = 0.0, spacing: str = "uniform"):
        super().__init__(steps, sampler, eta, spacing)
        self.stop_t = int(stop_t)

    def check_operator(self, operator: Any) -> None:
        super().check_operator(operator)
        try:
            down = operator.out_shape((1, 1, 32, 32))[-1] < 32
        except Exception:  # noqa: BLE001 -- an operator that cannot tell is not a resize
            down = False
        if not down:
            raise DiffinvError(f"solver 'ilvr' is for super-resolution: it needs a downsampling "
                               f"operator (sr-avgpool); got {type(operator).__name__}")

    def prepare(self, ctx: Context) -> None:
        ctx.data["svd"] = operator_svd(ctx.problem, ctx.y)

    def guide(self, ctx: Context, step: Step) -> Tensor:
        if step.t < self.stop_t:
            return step.x_prev
        target = noised_measurement(ctx.y, ctx.problem, step.abar_prev, step.generators)
        return project(step.x_prev, target, ctx.problem, ctx.data["svd"])
