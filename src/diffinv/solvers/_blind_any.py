"""Blind measurements of any blind family (kernel blur, rotation, zoom) for the non-diffusion
baselines (Pan-L0, SelfDeblur, the supervised UNet); the diffusion ones use ``_blind.py``.

A blind measurement (``physics.blind``) names a blind family and its public settings; the drawn
parameters (kernel, std, angle, zoom) are the hidden truth and are never read here
(``physics.true_params`` is not touched). :func:`blind_problem` rebuilds the operator from the
public record, as blind DMPlug does (``solvers/dmplug.py``, ``_blind_unknowns``), and says what a
kernel-estimating method should estimate:

* blind Gaussian / motion blur: a ``size x size`` kernel (the operator's kernel size) applied with
  the operator's boundary rule;
* blind rotation / zoom blur: these are not convolutions; kernel methods run with their
  convolution model anyway, a ``9 x 9`` kernel (the default size of the kernel families) with a
  circular boundary, as the CL-DPS paper ran its kernel-based baselines on these families.
  ``BlindProblem.convolution_model`` is then False and the solvers say so in their trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError

#: the blind families these solvers accept
BLIND_FAMILIES = ("blind-motion-blur", "blind-gaussian-blur", "blind-rotation-blur",
                  "blind-zoom-blur")
#: kernel size and boundary of the convolution model used on rotation / zoom blur
WARP_KERNEL_SIZE = 9
WARP_BOUNDARY = "circular"


@dataclass
class BlindProblem:
    """What a blind solver may know: the family, the kernel it estimates, the noise model."""

    family: str
    operator: Any
    kernel_size: int
    boundary: str
    #: True when the family *is* a convolution (Gaussian, motion); False for rotation / zoom
    convolution_model: bool
    noise: Any
    image_shape: tuple[int, int, int, int]

    def model_note(self) -> str:
        """One line for the trace: which forward model the kernel method fitted."""
        if self.convolution_model:
            return f"convolution, {self.kernel_size}x{self.kernel_size} kernel, {self.boundary}"
        return (f"convolution model ({self.kernel_size}x{self.kernel_size} kernel, "
                f"{self.boundary}) on {self.family}, which is not a convolution (as CL-DPS ran "
                "its kernel-based baselines)")


def blind_problem(solver: Any, y: Tensor, physics: Any) -> BlindProblem:
    """Check ``y`` and the blind measurement ``physics``; build the :class:`BlindProblem`.

    Refuses a non-blind measurement (naming the blind families it needs) and a blind family
    other than the four blur families.
    """
    name = getattr(solver, "name", type(solver).__name__)
    if not isinstance(y, Tensor) or y.ndim != 4:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ShapeError(f"solver {name!r} needs y as a batch of images (B, C, H, W); got {got}")
    if not torch.isfinite(y).all():
        raise NonFiniteError("the measurement y contains NaN/Inf")
    for need in ("make_operator", "make_noise"):
        if not callable(getattr(physics, need, None)):
            raise DiffinvError(f"physics must be a Measurement (with {need}()); got "
                               f"{type(physics).__name__}")
    op_name = str(getattr(physics, "operator", "?"))
    if not getattr(physics, "blind", False):
        raise DiffinvError(f"solver {name!r} is a blind deblurring method: it needs a blind "
                           f"measurement ({', '.join(BLIND_FAMILIES)}); operator {op_name!r} is "
                           "not blind (use a non-blind solver, or measure with a blind- family)")
    if op_name not in BLIND_FAMILIES:
        raise DiffinvError(f"solver {name!r} handles the blind blur families "
                           f"({', '.join(BLIND_FAMILIES)}), not {op_name!r}")
    from diffinv.physics.blur import GaussianBlur, MotionBlur

    op = physics.make_operator()
    if isinstance(op, GaussianBlur | MotionBlur):
        k, boundary, conv = int(op.size), str(op.boundary), True
    else:
        k, boundary, conv = WARP_KERNEL_SIZE, WARP_BOUNDARY, False
    B, C, H, W = (int(s) for s in y.shape)
    if k > min(H, W):
        raise ShapeError(f"a {k}x{k} kernel does not fit {H}x{W} images")
    return BlindProblem(op_name, op, k, boundary, conv, physics.make_noise(), (B, C, H, W))
