"""What the blind-deblurring solvers (BlindDPS, GibbsDDRM, FastEM) read from a blind measurement.

:func:`diffinv.solvers._common.unpack` refuses blind measurements (their operator parameters are
hidden). A blind kernel solver needs only the public facts of the family: the kernel size, the
boundary rule and the noise model; it never reads ``true_params`` (nor ``params``, which are empty
for a blind family). :func:`unpack_blind` gathers them and builds a plain :class:`~Blur` with the
family's boundary, to which the solver passes its current kernel estimate as ``kernel=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.physics.blur import Blur, GaussianBlur, MotionBlur
from diffinv.solvers._common import Problem, SolverDivergedError

BLIND_KERNEL_FAMILIES = ("blind-gaussian-blur", "blind-motion-blur")


@dataclass
class BlindBlur:
    """The public facts of a blind blur measurement."""

    family: Any            # the blind family operator (never called with parameters)
    blur: Blur             # a plain blur with the family's boundary; pass ``kernel=(B, k, k)``
    kernel_size: int
    boundary: str
    noise: Any
    image_shape: tuple[int, int, int, int]

    def problem(self, kernel: Tensor) -> Problem:
        """A non-blind :class:`Problem` for the current kernel estimate (for SVD helpers)."""
        return Problem(self.blur, {"kernel": kernel}, self.noise, self.image_shape)


def unpack_blind(solver: Any, y: Tensor, physics: Any, prior: Any) -> BlindBlur:
    """Check ``y`` and ``physics`` (a blind Gaussian or motion blur measurement) and the prior's
    domain; return the family's public facts. Non-blind measurements are refused."""
    if not isinstance(y, Tensor) or y.ndim != 4:
        raise ShapeError("y must be a batched image tensor (B, C, H, W)")
    if not torch.isfinite(y).all():
        raise NonFiniteError("the measurement y contains NaN/Inf")
    for need in ("make_operator", "make_noise"):
        if not callable(getattr(physics, need, None)):
            raise DiffinvError(f"physics must be a Measurement (with {need}()); got "
                               f"{type(physics).__name__}")
    op = physics.make_operator()
    if not getattr(physics, "blind", False) or not getattr(op, "blind", False):
        raise DiffinvError(
            f"solver {solver.name!r} estimates the kernel of a blind family "
            f"({', '.join(BLIND_KERNEL_FAMILIES)}); operator "
            f"{getattr(op, 'registry_name', type(op).__name__)!r} is not blind (use a "
            "non-blind solver such as dps when the kernel is known)")
    if not isinstance(op, GaussianBlur | MotionBlur):
        raise DiffinvError(
            f"solver {solver.name!r} estimates blur kernels ({', '.join(BLIND_KERNEL_FAMILIES)});"
            f" it cannot handle the blind family {getattr(op, 'registry_name', '')!r}")
    B, C, H, W = (int(s) for s in y.shape)
    want = tuple(getattr(prior, "image_shape", (C, H, W)))
    if want != (C, H, W):
        raise ShapeError(f"the measurement is of images {(C, H, W)} but the prior "
                         f"{getattr(prior, 'name', '')!r} models images {want} (another domain)")
    k = int(op.size)
    if k > min(H, W):
        raise ShapeError(f"a {k}x{k} kernel does not fit {H}x{W} images")
    blur = Blur(boundary=op.boundary).to(y.device)
    return BlindBlur(op, blur, k, op.boundary, physics.make_noise(), (B, C, H, W))


class KernelDivergedError(SolverDivergedError):
    """A kernel estimate became NaN/Inf. ``images`` lists the batch positions concerned; the
    solver stops (the run is not a result) and ``last_finite`` holds the image iterate before the
    step, ``last_kernel`` the last finite kernel estimates."""

    def __init__(self, solver: str, step: int, timestep: int | None, images: list[int],
                 last_finite: Tensor, last_kernel: Tensor, trace: dict[str, Any] | None = None):
        super().__init__(solver, step, timestep, last_finite, trace)
        self.images, self.last_kernel = images, last_kernel.detach()
        self.args = (f"solver {solver!r}: the kernel estimate of image(s) {images} became "
                     f"NaN/Inf at step {step} (timestep {timestep}); that run is stopped, the "
                     "last finite kernels are in .last_kernel (try a smaller kernel step)",)


def check_kernel_finite(name: str, kernel: Tensor, x_last: Tensor, k_last: Tensor, step: int,
                        timestep: int | None, trace: dict[str, Any] | None = None) -> None:
    """Raise :class:`KernelDivergedError` when some image's ``kernel`` holds a NaN/Inf."""
    bad = ~torch.isfinite(kernel.flatten(1)).all(1)
    if bad.any():
        raise KernelDivergedError(name, step, timestep, bad.nonzero().flatten().tolist(),
                                  x_last, k_last, trace)


def delta_kernel(batch: int, size: int, *, device: Any = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, size, size)`` identity kernels (a 1 at the anchor ``size // 2``)."""
    k = torch.zeros(batch, size, size, device=device, dtype=dtype)
    k[:, size // 2, size // 2] = 1
    return k


def kernel_design(x: Tensor, size: int, boundary: str) -> Tensor:
    """``(B, C H W, size^2)``: column ``j`` is ``e_j * x`` (``e_j`` the j-th unit kernel), so that
    ``blur(x, k, boundary).flatten(1) = D @ k.flatten(1)`` per image (blur is linear in ``k``)."""
    from diffinv.physics.blur import blur

    B = x.shape[0]
    eye = torch.eye(size * size, device=x.device, dtype=x.dtype).reshape(-1, size, size)
    cols = blur(x.repeat_interleave(size * size, 0), eye.repeat(B, 1, 1), boundary)
    return cols.reshape(B, size * size, -1).transpose(1, 2)
