r"""Blur-kernel data sets: kernels as small 1-channel images, for kernel priors and denoisers.

``kernels9`` holds 9x9 kernels from the generators of the blind families of
:mod:`diffinv.physics.registry` (``blind-motion-blur``, ``blind-gaussian-blur``): kernel ``j`` of a
split is drawn from the generator ``image_seed(SEED[split], j)``; even ``j`` is a random-trajectory
motion kernel of intensity 0.5 (:func:`~diffinv.physics.kernels.motion_kernel`, the family's
default), odd ``j`` an isotropic Gaussian of standard deviation ``U(1, 2)`` px (the family's
``std_range``). Train: 20,000 kernels (seed 0); valid: 2,000 (seed 1); test: 2,000 (seed 2).

``kernels9-wide`` (issue 42) has the same sizes, seeds and canvas, with kernels from the families
of :mod:`diffinv.physics.kernel_families` in a cycle of eight: kernel ``j`` comes from family
``KERNEL_MIX["kernels9-wide"][j % 8]`` = today's motion, today's Gaussian, wide motion, wide
Gaussian, anisotropic Gaussian, Airy, disk, wide motion (so 3/8 motion, 1/4 isotropic Gaussian,
1/8 each anisotropic, Airy, disk). Labels are the family's index in :data:`KINDS` (0 motion,
1 Gaussian: those of ``kernels9``; 2 wide motion, 3 wide Gaussian, 4 anisotropic Gaussian,
5 Airy, 6 disk). :func:`draw_kernel` takes the cycle as its ``families`` option.

**Kernel <-> image.** A kernel ``k >= 0`` summing to 1 is the image ``2 k / max(k) - 1`` on its
``9 x 9`` window, placed in a ``12 x 12`` canvas of background ``-1`` (zero kernel) at offset
``(1, 1)`` (rows and columns 1..9; the canvas is even so that the UNet can halve it twice,
``12 -> 6 -> 3``; a 9x9 image cannot be halved and put back by nearest up-sampling). The
inverse is BlindDPS's official normalisation ``k = ((c + 1)/2) / sum((c + 1)/2)`` over the window
(clamped at 0 first, as the canvas is clamped to ``[-1, 1]`` by Tweedie): it inverts the forward
map exactly (the max-scaling is a positive factor that the sum-normalisation removes).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics.kernel_families import FAMILIES, make_family
from diffinv.seeding import image_seed

#: name -> (kernel size, canvas size)
KERNEL_SETS: dict[str, tuple[int, int]] = {"kernels9": (9, 12), "kernels9-wide": (9, 12)}
#: name -> the kernel families (:mod:`diffinv.physics.kernel_families`) kernel ``j`` cycles through
KERNEL_MIX: dict[str, tuple[str, ...]] = {
    "kernels9": ("motion", "gaussian"),
    "kernels9-wide": ("motion", "gaussian", "motion-wide", "gaussian-wide",
                      "gaussian-anisotropic", "airy", "disk", "motion-wide"),
}
#: label of a kernel = the index of its family here
KINDS: tuple[str, ...] = tuple(FAMILIES)
SIZES = {"train": 20_000, "valid": 2_000, "test": 2_000}
SEEDS = {"train": 0, "valid": 1, "test": 2}
MOTION_INTENSITY = 0.5
GAUSSIAN_STD = (1.0, 2.0)


def window_offset(size: int, canvas: int) -> int:
    """Top-left corner of a ``size x size`` kernel in a ``canvas x canvas`` image."""
    if size > canvas:
        raise ShapeError(f"a {size}x{size} kernel does not fit a {canvas}x{canvas} canvas")
    return (canvas - size) // 2


def kernel_to_image(kernel: Tensor, canvas: int) -> Tensor:
    """``(B, k, k)`` kernels -> ``(B, 1, canvas, canvas)`` images ``2 k / max(k) - 1``, ``-1`` outside."""
    if kernel.ndim != 3 or kernel.shape[-1] != kernel.shape[-2]:
        raise ShapeError(f"kernels must be (B, k, k); got {tuple(kernel.shape)}")
    k = kernel.shape[-1]
    o = window_offset(k, canvas)
    peak = kernel.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    img = torch.full((kernel.shape[0], 1, canvas, canvas), -1.0, dtype=kernel.dtype,
                     device=kernel.device)
    img[:, 0, o:o + k, o:o + k] = 2 * kernel / peak - 1
    return img


def image_to_kernel(image: Tensor, size: int) -> Tensor:
    """``(B, 1, c, c)`` images -> ``(B, size, size)`` PSFs: ``((w + 1)/2)_+ / sum`` on the window.

    Differentiable; a window that is ``-1`` everywhere (no mass) gives the uniform kernel."""
    if image.ndim != 4 or image.shape[1] != 1:
        raise ShapeError(f"kernel images must be (B, 1, c, c); got {tuple(image.shape)}")
    o = window_offset(size, image.shape[-1])
    w = ((image[:, 0, o:o + size, o:o + size] + 1) / 2).clamp_min(0)
    s = w.flatten(1).sum(1)[:, None, None]
    uniform = torch.full_like(w, 1.0 / (size * size))
    return torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), uniform)


@lru_cache(maxsize=16)
def _family(name: str):
    if name == "motion":
        return make_family(name, intensity=MOTION_INTENSITY)
    if name == "gaussian":
        return make_family(name, std_range=GAUSSIAN_STD)
    return make_family(name)


def draw_kernel(index: int, seed: int, size: int,
                families: tuple[str, ...] = KERNEL_MIX["kernels9"]) -> tuple[Tensor, int]:
    """Kernel ``index`` of the stream ``seed``: (``(size, size)`` float64, kind), drawn from
    family ``families[index % len(families)]`` (default: ``kernels9``'s, even ``index`` motion,
    odd Gaussian); ``kind`` is that family's index in :data:`KINDS`."""
    if not families:
        raise DiffinvError("draw_kernel needs at least one kernel family")
    name = families[index % len(families)]
    if name not in KINDS:
        raise DiffinvError(f"unknown kernel family {name!r}; known: {', '.join(KINDS)}")
    g = torch.Generator().manual_seed(image_seed(seed, index))
    return _family(name).draw(size, g), KINDS.index(name)


@lru_cache(maxsize=8)
def _split(name: str, split: str) -> tuple[Tensor, Tensor]:
    size, canvas = KERNEL_SETS[name]
    mix = KERNEL_MIX[name]
    ks, kinds = zip(*(draw_kernel(j, SEEDS[split], size, mix) for j in range(SIZES[split])),
                    strict=True)
    kernels = torch.stack(ks).float()
    return kernel_to_image(kernels, canvas), torch.tensor(kinds, dtype=torch.int64)


def load_kernel_split(name: str, split: str) -> tuple[Tensor, Tensor]:
    """(images ``(N, 1, c, c)`` in [-1, 1], kinds ``(N,)``) of a kernel data set's split."""
    if name not in KERNEL_SETS:
        raise DiffinvError(f"unknown kernel data set {name!r}; known: {sorted(KERNEL_SETS)}")
    if split not in SIZES:
        raise DiffinvError(f"unknown split {split!r}; known: {sorted(SIZES)}")
    images, kinds = _split(name, split)
    return images.clone(), kinds.clone()
