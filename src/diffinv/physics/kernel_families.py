r"""Kernel families: laws of random blur kernels, and their blind blur operators.

A family draws one ``(size, size)`` kernel (float64, ``>= 0``, summing to 1, anchored at
``size // 2``) from a seeded ``torch.Generator``: its parameters first (uniform draws in the order
of the table), then, for the trajectory families, the path. The same generator state gives the
same kernel; the kernel of image ``i`` depends on image ``i``'s generator only.

Today's families (``motion``, ``gaussian``: those of ``blind-motion-blur`` / ``blind-gaussian-blur``
and of the ``kernels9`` data set) are spread out: in the ``kernels9`` validation split every
kernel's peak is at most 0.27 and 95% of its mass needs at least 9 pixels (13 or more for 95% of
the kernels). The *wide* families cover what cameras and optics give too: compact and near-point
shake, Gaussians narrower than a pixel, elongated Gaussians, diffraction rings and defocus disks.
Their kernels are integrated over the pixel area (:mod:`diffinv.physics.kernels`), so that
sub-pixel widths are right.

================== ===================================== =========================================
family             parameters (``k`` = kernel size)      kernel
================== ===================================== =========================================
``motion``         intensity ``i = 0.5``                 :func:`~.kernels.motion_kernel` (path
                                                         ``(0.3 + 0.7 i)(k - 1)`` px, pen 0.5 px)
``gaussian``       std ``~ U(1, 2)`` px                  :func:`~.kernels.gaussian_kernel`
                                                         (sampled at pixel centres)
``motion-wide``    ``i ~ U(0, 1)``; path length          :func:`~.kernels.motion_kernel` with that
                   ``u (k - 1)`` px, ``u ~ U(0, 1)``     length (0: a point) and pen width
                   (down to a point); pen std
                   ``w ~ U(0.2, 0.5)`` px
``gaussian-wide``  std log-uniform on ``[0.3, 2.5]`` px  pixel-integrated isotropic Gaussian
``gaussian-        major-axis std log-uniform on         pixel-integrated Gaussian; minor std
anisotropic``      ``[0.3, 2.5]`` px; axes ratio         ``rho`` times the major; major axis at
                   ``rho ~ U(0.2, 1)``; angle            angle ``a`` from the column axis
                   ``a ~ U(0, pi)``                      towards the rows
``airy``           first dark ring radius                pixel-integrated Airy pattern
                   ``r0 ~ U(0.5, 2.5)`` px               ``(2 J1(q)/q)^2``, ``q = 3.83 r / r0``
                                                         (rings inside a 9x9 window for
                                                         ``r0 < 3``)
``disk``           radius ``R ~ U(0.5, 4)`` px           pixel-integrated uniform disk
                                                         (geometric defocus)
================== ===================================== =========================================

Every range is a constructor argument of the family and of its operator (``make_operator(
"blind-airy-blur", radius_range=(1, 2))``); a range outside its allowed interval (the table's
bounds: intensity and axes ratio in ``[0, 1]``/``(0, 1]``, path length fraction in ``[0, 1]``,
widths, stds and radii ``> 0`` (pen width ``>= 0``), low <= high) is refused with a
:class:`~diffinv.errors.DiffinvError`. The measured peak and support distributions of 2,000
kernels per family are in ``benchmarks/kernel_families.md``.

The operators (:class:`FamilyBlur` and its subclasses) are blur operators whose per-image
parameter is the kernel itself (as :class:`~diffinv.physics.blur.MotionBlur`): ``draw_params``
draws one kernel per image from the family; blind, the kernel is the hidden truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.physics.base import check_int
from diffinv.physics.blur import Blur
from diffinv.physics.kernels import (
    airy_kernel,
    disk_kernel,
    gaussian_kernel,
    integrated_gaussian_kernel,
    motion_kernel,
)

Range = tuple[float, float]


def check_range(value: Any, name: str, *, low: float = 0.0, high: float = math.inf,
                low_open: bool = False) -> Range:
    """A ``(lo, hi)`` pair of finite numbers with ``low <= lo <= hi <= high`` (``low < lo`` when
    ``low_open``); otherwise a :class:`DiffinvError` naming ``name`` and the allowed interval."""
    lb = "(" if low_open else "["
    allowed = f"{lb}{low:g}, {high:g}]" if math.isfinite(high) else f"{lb}{low:g}, inf)"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"{name} must be a pair (low, high) of numbers in {allowed}, got "
                           f"{value!r}") from e
    ok = (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and hi <= high
          and (lo > low if low_open else lo >= low))
    if not ok:
        raise DiffinvError(f"{name} must be a pair (low, high) with low <= high, both in "
                           f"{allowed}; got {tuple(value)!r}")
    return lo, hi


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _lerp(r: Range, u: float) -> float:
    return r[0] + (r[1] - r[0]) * u


def _log_lerp(r: Range, u: float) -> float:
    return r[0] * (r[1] / r[0]) ** u


#: :func:`check_range` settings of a range of positive numbers (stds, radii)
_POSITIVE: dict[str, Any] = {"low_open": True}


@dataclass(frozen=True)
class KernelFamily:
    """A law of random kernels (see the module docstring); subclasses set ``name`` and the law."""

    name: ClassVar[str] = ""
    #: the range fields :meth:`__post_init__` checks, in order: field -> :func:`check_range`
    #: keyword arguments (``label``: the name errors give, the field's by default)
    range_checks: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self):
        for f, kw in self.range_checks.items():
            kw = dict(kw)
            label = kw.pop("label", f)
            object.__setattr__(self, f, check_range(getattr(self, f), label, **kw))

    def draw_params(self, generator: torch.Generator) -> dict[str, float]:
        """The family's parameters for one kernel (uniform draws from ``generator``)."""
        raise NotImplementedError

    def kernel(self, size: int, **params: float) -> Tensor:
        """The ``(size, size)`` float64 kernel of given parameters (deterministic families)."""
        raise NotImplementedError

    def draw(self, size: int, generator: torch.Generator) -> Tensor:
        """One random ``(size, size)`` float64 kernel."""
        size = check_int(size, "kernel size")
        return self.kernel(size, **self.draw_params(generator))

    def config(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ClassicMotion(KernelFamily):
    """Today's motion family: :func:`motion_kernel` of a fixed intensity."""

    name: ClassVar[str] = "motion"
    intensity: float = 0.5

    def __post_init__(self):
        i = float(self.intensity)
        if not 0 <= i <= 1:
            raise DiffinvError(f"motion intensity must be in [0, 1], got {self.intensity!r}")
        object.__setattr__(self, "intensity", i)

    def draw(self, size: int, generator: torch.Generator) -> Tensor:
        return motion_kernel(size, self.intensity, generator)


@dataclass(frozen=True)
class ClassicGaussian(KernelFamily):
    """Today's Gaussian family: sampled isotropic Gaussian, std ``~ U(std_range)``."""

    name: ClassVar[str] = "gaussian"
    range_checks: ClassVar[dict[str, dict[str, Any]]] = {"std_range": _POSITIVE}
    std_range: Range = (1.0, 2.0)

    def draw_params(self, generator):
        return {"std": _lerp(self.std_range, _uniform(generator))}

    def draw(self, size: int, generator: torch.Generator) -> Tensor:
        # as kernels9 draws it: the std stays a float64 tensor
        lo, hi = self.std_range
        std = lo + (hi - lo) * torch.rand((), generator=generator, dtype=torch.float64)
        return gaussian_kernel(check_int(size, "kernel size"), std)

    def kernel(self, size, std):
        return gaussian_kernel(size, float(std), dtype=torch.float64)


@dataclass(frozen=True)
class WideMotion(KernelFamily):
    """Random-trajectory kernels of random intensity, path length (down to a point) and pen."""

    name: ClassVar[str] = "motion-wide"
    intensity_range: Range = (0.0, 1.0)
    #: path length as a fraction of ``size - 1`` pixels
    length_range: Range = (0.0, 1.0)
    #: standard deviation of the smoothing pen, pixels
    width_range: Range = (0.2, 0.5)
    range_checks: ClassVar[dict[str, dict[str, Any]]] = {
        "intensity_range": {"high": 1.0},
        "length_range": {"label": "length_range (fraction of size - 1)", "high": 1.0},
        "width_range": {}}

    def draw_params(self, generator):
        g = generator
        return {"intensity": _lerp(self.intensity_range, _uniform(g)),
                "length": _lerp(self.length_range, _uniform(g)),
                "width": _lerp(self.width_range, _uniform(g))}

    def draw(self, size: int, generator: torch.Generator) -> Tensor:
        size = check_int(size, "kernel size")
        p = self.draw_params(generator)
        return motion_kernel(size, p["intensity"], generator, length=p["length"] * (size - 1),
                             width=p["width"])


@dataclass(frozen=True)
class WideGaussian(KernelFamily):
    """Pixel-integrated isotropic Gaussians, std log-uniform on ``std_range``."""

    name: ClassVar[str] = "gaussian-wide"
    range_checks: ClassVar[dict[str, dict[str, Any]]] = {"std_range": _POSITIVE}
    std_range: Range = (0.3, 2.5)

    def draw_params(self, generator):
        return {"std": _log_lerp(self.std_range, _uniform(generator))}

    def kernel(self, size, std):
        return integrated_gaussian_kernel(size, std)


@dataclass(frozen=True)
class AnisotropicGaussian(KernelFamily):
    """Pixel-integrated Gaussians: major std log-uniform, axes ratio and angle uniform."""

    name: ClassVar[str] = "gaussian-anisotropic"
    std_range: Range = (0.3, 2.5)
    ratio_range: Range = (0.2, 1.0)
    range_checks: ClassVar[dict[str, dict[str, Any]]] = {
        "std_range": _POSITIVE, "ratio_range": {"high": 1.0, "low_open": True}}

    def draw_params(self, generator):
        g = generator
        std = _log_lerp(self.std_range, _uniform(g))
        ratio = _lerp(self.ratio_range, _uniform(g))
        return {"std": std, "std_minor": ratio * std, "angle": math.pi * _uniform(g)}

    def kernel(self, size, std, std_minor, angle):
        return integrated_gaussian_kernel(size, std, std_minor, angle)


@dataclass(frozen=True)
class _RadiusFamily(KernelFamily):
    """Kernels of one radius, uniform on ``radius_range`` (subclasses set the default range)."""

    radius_range: Range = (0.5, 2.5)
    range_checks: ClassVar[dict[str, dict[str, Any]]] = {"radius_range": _POSITIVE}

    def draw_params(self, generator):
        return {"radius": _lerp(self.radius_range, _uniform(generator))}


@dataclass(frozen=True)
class Airy(_RadiusFamily):
    """Pixel-integrated Airy patterns (diffraction by a circular aperture), with rings."""

    name: ClassVar[str] = "airy"
    #: radius of the first dark ring, pixels
    radius_range: Range = (0.5, 2.5)

    def kernel(self, size, radius):
        return airy_kernel(size, radius)


@dataclass(frozen=True)
class Disk(_RadiusFamily):
    """Pixel-integrated uniform disks (geometric defocus)."""

    name: ClassVar[str] = "disk"
    radius_range: Range = (0.5, 4.0)

    def kernel(self, size, radius):
        return disk_kernel(size, radius)


FAMILIES: dict[str, type[KernelFamily]] = {
    c.name: c for c in (ClassicMotion, ClassicGaussian, WideMotion, WideGaussian,
                        AnisotropicGaussian, Airy, Disk)
}
#: the families added for kernels users meet (issue 42), in the order of the table
WIDE_FAMILIES = ("motion-wide", "gaussian-wide", "gaussian-anisotropic", "airy", "disk")


def make_family(name: str, **settings: Any) -> KernelFamily:
    """The family ``name`` with its ranges overridden by ``settings``."""
    if name not in FAMILIES:
        raise UnknownNameError("kernel family", name, list(FAMILIES))
    cls = FAMILIES[name]
    fields = [f.name for f in dataclass_fields(cls)]
    bad = sorted(set(settings) - set(fields))
    if bad:
        raise DiffinvError(f"kernel family {name!r} does not take {bad}; it takes {fields}")
    return cls(**settings)


def draw_kernels(family: KernelFamily, generators: Sequence[torch.Generator], size: int, *,
                 dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Tensor:
    """One kernel per generator: ``(B, size, size)``."""
    ks = [family.draw(size, g) for g in generators]
    return torch.stack(ks).to(dtype=dtype, device=device)


# ---------------------------------------------------------------- operators
class FamilyBlur(Blur):
    """Blur with a kernel per image drawn from a :class:`KernelFamily` (``kernel=(B, k, k)``).

    Non-blind: the drawn kernels are public; blind: they are the hidden truth. Subclasses name the
    family and spell out its ranges as constructor arguments."""

    family_name: ClassVar[str] = ""
    required_params = ("kernel",)

    def __init__(self, size: int, boundary: str, blind: bool, **ranges: Any):
        super().__init__(None, boundary)
        self.size = check_int(size, "kernel size")
        self.family = make_family(self.family_name, **ranges)
        for k in ranges:
            setattr(self, k, getattr(self.family, k))
        self.blind = bool(blind)
        what = (type(self).__doc__ or "blur").split("\n")[0].rstrip(".")
        what = what[0].lower() + what[1:]
        self.description = (f"blind {what}: kernel per image, hidden" if self.blind
                            else f"{what}: kernel per image")

    def config(self) -> dict:
        return {"size": self.size, **self.family.config(), "boundary": self.boundary,
                "blind": self.blind}

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        return {"kernel": draw_kernels(self.family, generators, self.size, dtype=dtype,
                                       device=device)}


class WideMotionBlur(FamilyBlur):
    """Motion blur, wide family (random intensity, path length down to a point, pen width)."""

    family_name = "motion-wide"

    def __init__(self, size: int = 9, intensity_range: Range = WideMotion.intensity_range,
                 length_range: Range = WideMotion.length_range,
                 width_range: Range = WideMotion.width_range, boundary: str = "circular",
                 blind: bool = False):
        super().__init__(size, boundary, blind, intensity_range=intensity_range,
                         length_range=length_range, width_range=width_range)


class WideGaussianBlur(FamilyBlur):
    """Gaussian blur, wide family (pixel-integrated, std log-uniform from 0.3 px)."""

    family_name = "gaussian-wide"

    def __init__(self, size: int = 9, std_range: Range = WideGaussian.std_range,
                 boundary: str = "circular", blind: bool = False):
        super().__init__(size, boundary, blind, std_range=std_range)


class AnisotropicGaussianBlur(FamilyBlur):
    """Anisotropic Gaussian blur (pixel-integrated; random major std, axes ratio and angle)."""

    family_name = "gaussian-anisotropic"

    def __init__(self, size: int = 9, std_range: Range = AnisotropicGaussian.std_range,
                 ratio_range: Range = AnisotropicGaussian.ratio_range,
                 boundary: str = "circular", blind: bool = False):
        super().__init__(size, boundary, blind, std_range=std_range, ratio_range=ratio_range)


class AiryBlur(FamilyBlur):
    """Diffraction blur, Airy pattern with rings (pixel-integrated, random first-ring radius)."""

    family_name = "airy"

    def __init__(self, size: int = 9, radius_range: Range = Airy.radius_range,
                 boundary: str = "circular", blind: bool = False):
        super().__init__(size, boundary, blind, radius_range=radius_range)


class DefocusBlur(FamilyBlur):
    """Defocus blur, uniform disk (pixel-integrated, random radius)."""

    family_name = "disk"

    def __init__(self, size: int = 9, radius_range: Range = Disk.radius_range,
                 boundary: str = "circular", blind: bool = False):
        super().__init__(size, boundary, blind, radius_range=radius_range)
