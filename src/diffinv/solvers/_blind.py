"""What a blind deblurring solver may read from a blind measurement, for every blind solver.

:func:`diffinv.solvers._common.unpack` refuses blind measurements (their operator parameters are
hidden). A blind measurement (``physics.blind``) names a blind family and its public settings; the
drawn parameters (kernel, std, angle, zoom) are the hidden truth and are never read here (neither
``physics.true_params`` nor ``params``, which are empty for a blind family). :func:`blind_problem`
rebuilds the family's operator from the public record (as blind DMPlug does) and says what a
kernel-estimating method estimates:

* blind Gaussian / motion blur and the kernel families of
  :mod:`diffinv.physics.kernel_families` (wide motion and Gaussian, anisotropic Gaussian, Airy,
  defocus): a ``size x size`` kernel (the operator's kernel size) applied with the operator's
  boundary rule;
* blind rotation / zoom blur: these are not convolutions; the kernel methods (BlindDPS, GibbsDDRM,
  FastEM, Pan-L0, SelfDeblur) run with their *convolution model* anyway, a ``9 x 9`` kernel (the
  kernel families' default size, that of the ``kernels9`` prior and the kernel denoiser) with a
  circular boundary, as the CL-DPS paper ran its kernel-based baselines on these families.
  ``BlindProblem.convolution_model`` is then False and the solvers say so in
  ``trace["forward_model"]``.

``BlindProblem.blur`` is a plain :class:`~diffinv.physics.blur.Blur` with that boundary, to which a
solver passes its current kernel estimate (``problem(kernel)`` wraps it as a non-blind
:class:`~diffinv.solvers._common.Problem` for the SVD helpers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.physics.blur import Blur, GaussianBlur, MotionBlur
from diffinv.physics.kernel_families import FamilyBlur
from diffinv.solvers._common import Problem, SolverDivergedError

#: the blind families the blind solvers accept
BLIND_FAMILIES = ("blind-motion-blur", "blind-gaussian-blur", "blind-rotation-blur",
                  "blind-zoom-blur", "blind-motion-blur-wide", "blind-gaussian-blur-wide",
                  "blind-anisotropic-gaussian-blur", "blind-airy-blur", "blind-defocus-blur")
#: what a blind-only solver needs, for its help (``Solver.needs``)
BLIND_NEEDS = ("a blind blur family (the blind-*-blur operators of `diffinv measure --list`)",)
#: what a solver that is blind only with ``blind=True`` (``--blind``) needs, for its help
BLIND_OPTION_NEEDS = ("any known operator, or with --blind a blind blur family",)
#: kernel size and boundary of the convolution model used on rotation / zoom blur
WARP_KERNEL_SIZE = 9
WARP_BOUNDARY = "circular"


@dataclass
class KernelProblem(Problem):
    """A non-blind :class:`Problem` for a kernel estimate, with the forward model it stands for."""

    forward_model: str = ""


@dataclass
class BlindProblem:
    """What a blind solver may know: the family, the kernel it estimates, the noise model."""

    family: str
    operator: Any          # the blind family operator (never called with parameters)
    kernel_size: int
    boundary: str
    #: True when the family *is* a convolution (the kernel families); False for rotation / zoom
    convolution_model: bool
    noise: Any
    image_shape: tuple[int, int, int, int]
    blur: Blur             # a plain blur with ``boundary``; pass ``kernel=(B, k, k)``

    def problem(self, kernel: Tensor) -> KernelProblem:
        """A non-blind problem for the current kernel estimate (for the SVD helpers)."""
        return KernelProblem(self.blur, {"kernel": kernel}, self.noise, self.image_shape,
                             self.model_note())

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
    op = physics.make_operator()
    if not getattr(physics, "blind", False) or not getattr(op, "blind", False):
        raise DiffinvError(f"solver {name!r} is a blind deblurring method: it needs a blind "
                           f"measurement ({', '.join(BLIND_FAMILIES)}); operator {op_name!r} is "
                           "not blind (use a non-blind solver such as dps when the operator is "
                           "known, or measure with a blind- family)")
    if op_name not in BLIND_FAMILIES:
        raise DiffinvError(f"solver {name!r} handles the blind blur families "
                           f"({', '.join(BLIND_FAMILIES)}), not {op_name!r}")
    if isinstance(op, GaussianBlur | MotionBlur | FamilyBlur):
        k, boundary, conv = int(op.size), str(op.boundary), True
    else:
        k, boundary, conv = WARP_KERNEL_SIZE, WARP_BOUNDARY, False
    B, C, H, W = (int(s) for s in y.shape)
    if k > min(H, W):
        raise ShapeError(f"a {k}x{k} kernel does not fit {H}x{W} images")
    blur = Blur(boundary=boundary).to(y.device)
    return BlindProblem(op_name, op, k, boundary, conv, physics.make_noise(), (B, C, H, W), blur)


def unpack_blind(solver: Any, y: Tensor, physics: Any, prior: Any) -> BlindProblem:
    """:func:`blind_problem` plus the check that the prior models the measurement's images."""
    bp = blind_problem(solver, y, physics)
    C, H, W = bp.image_shape[1:]
    want = tuple(getattr(prior, "image_shape", (C, H, W)))
    if want != (C, H, W):
        raise ShapeError(f"the measurement is of images {(C, H, W)} but the prior "
                         f"{getattr(prior, 'name', '')!r} models images {want} (another domain)")
    return bp


def circular_start_problem(solver: Any, y: Tensor, physics: Any, prior: Any,
                           needs: str) -> KernelProblem:
    """:func:`unpack_blind` for the solvers whose kernel step is an FFT closed form: refuses a
    family whose boundary is not circular (``needs`` says why, in the solver's words) and returns
    the non-blind problem of the identity kernel they start from."""
    bb = unpack_blind(solver, y, physics, prior)
    if bb.boundary != "circular":
        raise DiffinvError(f"solver {solver.name!r} {needs}; this family's boundary is "
                           f"{bb.boundary!r}")
    return bb.problem(delta_kernel(y.shape[0], bb.kernel_size, device=y.device, dtype=y.dtype))


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


def centre_shifts(k: Tensor) -> list[tuple[int, int]]:
    """Per kernel of ``k`` (B, kh, kw), the whole-pixel shift ``(dy, dx)`` moving its centre of
    mass to its anchor ``(kh // 2, kw // 2)``; one host transfer for the whole batch."""
    _, kh, kw = k.shape
    m = k.sum((1, 2)).clamp_min(1e-30)
    ys = torch.arange(kh, dtype=k.dtype, device=k.device)
    xs = torch.arange(kw, dtype=k.dtype, device=k.device)
    cy = (k.sum(2) * ys).sum(1) / m
    cx = (k.sum(1) * xs).sum(1) / m
    return [(round(kh // 2 - y), round(kw // 2 - x))
            for y, x in torch.stack([cy, cx], 1).tolist()]


def centre_shift(k: Tensor) -> tuple[int, int]:
    """:func:`centre_shifts` of one kernel ``k`` (kh, kw)."""
    return centre_shifts(k.unsqueeze(0))[0]


def kernel_design(x: Tensor, size: int, boundary: str) -> Tensor:
    """``(B, C H W, size^2)``: column ``j`` is ``e_j * x`` (``e_j`` the j-th unit kernel), so that
    ``blur(x, k, boundary).flatten(1) = D @ k.flatten(1)`` per image (blur is linear in ``k``)."""
    from diffinv.physics.blur import blur

    B = x.shape[0]
    eye = torch.eye(size * size, device=x.device, dtype=x.dtype).reshape(-1, size, size)
    cols = blur(x.repeat_interleave(size * size, 0), eye.repeat(B, 1, 1), boundary)
    return cols.reshape(B, size * size, -1).transpose(1, 2)
