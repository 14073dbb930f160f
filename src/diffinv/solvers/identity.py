r"""The do-nothing bar: the measurement itself as the estimate (``y``), or ``A^+ y`` where the
measurement does not have the image's shape.

Every restoration table carries this row (DESIGN.md, "Every restoration table has the do-nothing
bar"): a method that scores below it returns images further from the truth than the blurred,
noisy input it was given. It reads no prior and no network (NFE 0) and draws nothing at random.

* ``y`` of the image's shape (deblurring, blind or not; denoising; inpainting with the holes as
  they are): ``x_hat = y``, unchanged (not clamped: the metrics compare it as it is);
* otherwise (super-resolution, ...), with a known operator: ``x_hat = A^+ y`` through the
  operator's fast SVD (singular values below ``pinv_eps`` treated as zero), else ``A^T y`` for a
  linear operator without one. A blind measurement of another shape is refused (no operator to
  invert).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError
from diffinv.solvers.base import Solver, register_solver


@register_solver("identity")
class Identity(Solver):
    """``x_hat = y`` (image-shaped measurements) or ``A^+ y`` (the do-nothing bar)."""

    summary = ("the measurement as the estimate: y itself, or A^+ y where sizes differ (the "
               "do-nothing bar of every table; no network)")
    requires = ()

    def __init__(self, pinv_eps: float = 1e-3):
        if not pinv_eps > 0:
            raise DiffinvError(f"pinv_eps must be > 0, got {pinv_eps}")
        self.pinv_eps = float(pinv_eps)

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        if not torch.isfinite(y).all():
            raise NonFiniteError("the measurement y contains NaN/Inf")
        want = tuple(getattr(prior, "image_shape", y.shape[1:]))
        if tuple(y.shape[1:]) == want:
            return y.detach().clone(), {"estimate": "y"}
        from diffinv.solvers._common import has_fast_svd, operator_svd, unpack

        if getattr(physics, "blind", False):
            raise DiffinvError(f"the identity row needs y of the image's shape {want} or a known "
                               f"operator to invert; this blind measurement has shape "
                               f"{tuple(y.shape[1:])}")
        problem = unpack(self, y, physics, prior)
        op = problem.operator
        if has_fast_svd(op):
            return operator_svd(problem, y).pinv(y, self.pinv_eps), {"estimate": "A^+ y"}
        if getattr(op, "linear", False) and callable(getattr(op, "adjoint", None)):
            return op.adjoint(y, **problem.params), {"estimate": "A^T y"}
        raise DiffinvError(f"operator {type(op).__name__} gives y of shape {tuple(y.shape[1:])} "
                           f"(the image is {want}) and has no SVD or adjoint to map it back")
