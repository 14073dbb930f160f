"""Operators by name: ``make_operator("motion-blur", size=9)`` and ``list_operators()``.

Defaults are the 32x32 conventions of DESIGN.md (the papers' 256x256 sizes scaled down); every
operator works at any size and channel count. Names starting with ``blind-`` are blind families:
their per-image parameters are hidden from the solver.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.physics.base import Operator
from diffinv.physics.blur import Blur, GaussianBlur, MotionBlur
from diffinv.physics.inpaint import BoxInpaint, Identity, RandomInpaint
from diffinv.physics.kernel_families import (
    AiryBlur,
    AnisotropicGaussianBlur,
    DefocusBlur,
    WideGaussianBlur,
    WideMotionBlur,
)
from diffinv.physics.nonlinear import NonlinearBlur
from diffinv.physics.phase import PhaseRetrieval
from diffinv.physics.resize import AvgPoolSR, BicubicSR
from diffinv.physics.warps import RotationBlur, ZoomBlur


def _bkse(weights: str | None = None, latent_scale: float = 1.2) -> Operator:
    from diffinv.physics.bkse import BkseBlur

    return BkseBlur(weights, latent_scale)


@dataclass(frozen=True)
class Entry:
    factory: Callable[..., Operator]
    description: str
    fixed: dict[str, Any]  # arguments the name fixes (e.g. blind=True)


def _entry(factory, description: str, **fixed) -> Entry:
    return Entry(factory, description, fixed)


OPERATORS: dict[str, Entry] = {
    "identity": _entry(Identity, "identity (denoising)"),
    "blur": _entry(Blur, "convolution with a given kernel (kernel=..., boundary)"),
    "gaussian-blur": _entry(GaussianBlur, "Gaussian blur, 9x9 kernel, std 1.5 px, circular"),
    "motion-blur": _entry(MotionBlur, "motion blur, 9x9 random-trajectory kernel per image, "
                          "intensity 0.5, circular"),
    "sr-avgpool": _entry(AvgPoolSR, "super-resolution x4 by average pooling (SVD; factor=2 too)"),
    "sr-bicubic": _entry(BicubicSR, "super-resolution x4 by antialiased bicubic (MATLAB-style)"),
    "inpaint-random": _entry(RandomInpaint, "random inpainting, 70% of pixels removed"),
    "inpaint-box": _entry(BoxInpaint, "box inpainting, one 16x16 box, 2 px margin"),
    "rotation-blur": _entry(RotationBlur, "rotation blur, mean of 9 rotations over +-15 deg"),
    "zoom-blur": _entry(ZoomBlur, "zoom blur, mean of 9 centred zooms from 1 to 1.25"),
    "nonlinear-blur": _entry(NonlinearBlur, "non-uniform motion blur + saturating response "
                             "clip(1.5 Kx) (our bkse substitute)"),
    "bkse-blur": _entry(_bkse, "DPS's bkse nonlinear blur from your GOPRO_wVAE.pth (weights=...)"),
    "phase-retrieval": _entry(PhaseRetrieval, "Fourier phase retrieval |FFT(pad(x))|, "
                              "oversample 2"),
    "blind-gaussian-blur": _entry(GaussianBlur, "blind Gaussian blur, std ~ U(1, 2) px per image",
                                  blind=True),
    "blind-motion-blur": _entry(MotionBlur, "blind motion blur, hidden random-trajectory kernel",
                                blind=True),
    "blind-motion-blur-wide": _entry(WideMotionBlur, "blind motion blur, wide family: intensity "
                                     "~ U(0, 1), path length ~ U(0, 1)(size - 1) px (down to a "
                                     "point), pen std ~ U(0.2, 0.5) px", blind=True),
    "blind-gaussian-blur-wide": _entry(WideGaussianBlur, "blind Gaussian blur, wide family: "
                                       "pixel-integrated, std log-uniform on [0.3, 2.5] px",
                                       blind=True),
    "blind-anisotropic-gaussian-blur": _entry(AnisotropicGaussianBlur, "blind anisotropic "
                                              "Gaussian blur: major std log-uniform on [0.3, 2.5] "
                                              "px, axes ratio ~ U(0.2, 1), angle ~ U(0, pi)",
                                              blind=True),
    "blind-airy-blur": _entry(AiryBlur, "blind diffraction blur: pixel-integrated Airy pattern "
                              "(rings), first dark ring radius ~ U(0.5, 2.5) px", blind=True),
    "blind-defocus-blur": _entry(DefocusBlur, "blind defocus blur: pixel-integrated uniform "
                                 "disk, radius ~ U(0.5, 4) px", blind=True),
    "blind-rotation-blur": _entry(RotationBlur, "blind rotation blur, theta ~ U(5, 25) deg",
                                  blind=True),
    "blind-zoom-blur": _entry(ZoomBlur, "blind zoom blur, z ~ U(1.1, 1.4)", blind=True),
}


def list_operators() -> list[tuple[str, str]]:
    """``[(name, one-line description)]`` of every registered operator."""
    return [(name, e.description) for name, e in OPERATORS.items()]


def operator_arguments(name: str) -> list[str]:
    """The keyword arguments ``make_operator(name, ...)`` accepts."""
    e = _get(name)
    sig = inspect.signature(e.factory)
    return [n for n, p in sig.parameters.items() if n != "self" and n not in e.fixed
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # not nn.Module's *args


def is_image_like(name: str | None) -> bool:
    """Whether operator ``name`` gives image-like measurements in the images' units (all but
    phase retrieval's Fourier magnitudes); unknown names count as image-like."""
    entry = OPERATORS.get(str(name))
    return bool(getattr(entry.factory, "image_like", True)) if entry else True


def _get(name: str) -> Entry:
    if name not in OPERATORS:
        raise UnknownNameError("operator", name, list(OPERATORS))
    return OPERATORS[name]


def make_operator(name: str, **params: Any) -> Operator:
    """Build the operator ``name`` with its defaults overridden by ``params``."""
    e = _get(name)
    allowed = operator_arguments(name)
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise DiffinvError(f"operator {name!r} does not take {bad}; it takes {allowed}")
    try:
        op = e.factory(**params, **e.fixed)
    except DiffinvError:
        raise
    except (TypeError, ValueError, OverflowError) as err:  # a setting of the wrong kind
        raise DiffinvError(f"bad settings for operator {name!r} ({params}): {err}") from err
    op.registry_name = name
    return op
