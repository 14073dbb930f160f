r"""Random blind measurements for training: an operator family and a strength drawn per sample.

``random_measurements(x, families, gens)`` returns ``y_i = A_i(x_i) + sigma_i n_i`` where, for image
``i`` and its generator ``g_i``, the family is drawn uniformly from ``families`` and then its
strength:

=========== ==================================================================== ==============
family      operator (32x32 conventions of DESIGN.md, circular boundaries)       training range
=========== ==================================================================== ==============
motion      9x9 random-trajectory kernel (:func:`physics.kernels.motion_kernel`) intensity U(0.2, 1)
gaussian    9x9 isotropic Gaussian kernel                                        std U(0.5, 2.5) px
rotation    mean of 9 rotations over [-theta, theta] (:class:`RotationBlur`)     theta U(2, 30) deg
zoom        mean of 9 centred zooms from 1 to z (:class:`ZoomBlur`)              z U(1.05, 1.5)
=========== ==================================================================== ==============

and ``sigma_i ~ U(0, sigma_max)`` (Gaussian noise in [-1, 1] units). The ranges contain the blind
families' evaluation ranges (Gaussian std U(1, 2), theta U(5, 25), z U(1.1, 1.4), motion intensity
0.5) with a margin on both sides, so that the encoder never sees a test strength at the edge of
its training distribution. Every draw comes from ``g_i``: a sample does not depend on the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.physics.blur import blur
from diffinv.physics.kernels import gaussian_kernel, motion_kernel
from diffinv.physics.warps import RotationBlur, ZoomBlur

FAMILIES = ("motion", "gaussian", "rotation", "zoom")
RANGES: dict[str, tuple[float, float]] = {
    "motion": (0.2, 1.0), "gaussian": (0.5, 2.5), "rotation": (2.0, 30.0), "zoom": (1.05, 1.5)}
KERNEL_SIZE = 9


def parse_families(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"motion,gaussian"`` -> ``("motion", "gaussian")``; unknown names are refused."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise DiffinvError(f"no operator family given; choose from {', '.join(FAMILIES)}")
    for n in names:
        if n not in FAMILIES:
            raise UnknownNameError("operator family", n, FAMILIES)
    return tuple(dict.fromkeys(names))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def apply_family(x: Tensor, family: str, strength: float, generator: torch.Generator) -> Tensor:
    """``A(x)`` for one image ``x`` (1, C, H, W) of ``family`` at ``strength`` (motion kernels
    draw their trajectory from ``generator``)."""
    if family == "motion":
        k = motion_kernel(KERNEL_SIZE, strength, generator).to(x.dtype)
        return blur(x, k, "circular")
    if family == "gaussian":
        return blur(x, gaussian_kernel(KERNEL_SIZE, strength, dtype=x.dtype), "circular")
    if family == "rotation":
        return RotationBlur(theta=strength)(x)
    if family == "zoom":
        return ZoomBlur(z=strength)(x)
    raise UnknownNameError("operator family", family, FAMILIES)


def random_measurements(x: Tensor, families: Sequence[str], generators: Sequence[torch.Generator],
                        sigma_max: float = 0.05) -> tuple[Tensor, list[str]]:
    """``(y, family of each image)``: one random blind measurement per image (see module doc)."""
    if len(generators) != x.shape[0]:
        raise DiffinvError(f"{len(generators)} generators for {x.shape[0]} images")
    ys, names = [], []
    for i, g in enumerate(generators):
        fam = families[int(torch.randint(len(families), (), generator=g))]
        y = apply_family(x[i:i + 1], fam, _uniform(g, *RANGES[fam]), g)
        sigma = _uniform(g, 0.0, sigma_max)
        noise = torch.randn(y.shape[1:], generator=g, dtype=torch.float32).to(y)
        ys.append(y + sigma * noise)
        names.append(fam)
    return torch.cat(ys), names
