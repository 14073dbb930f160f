r"""Blur kernels: validation, Gaussian kernels and random-trajectory motion kernels.

A kernel is a ``(k_h, k_w)`` (shared) or ``(B, k_h, k_w)`` (per image) tensor, non-negative and
summing to 1, anchored at index ``(k_h // 2, k_w // 2)`` (see :mod:`diffinv.physics.blur`).

**Motion kernels** (our own generator, in the spirit of the random camera trajectories of Boracchi &
Foi (2012) that the ``motionblur`` package used by DPS also follows; the code and constants here are
ours). A trajectory of ``T = 64`` time steps is drawn in the plane:

* heading ``phi_t = phi_0 + sum_{s<t} omega_s`` with ``phi_0 ~ U[0, 2 pi)`` and an angular velocity
  that is a random walk, ``omega_t = omega_{t-1} + sigma_omega eps_t``,
  ``sigma_omega = i pi / sqrt(T^3 / 3)`` (so the heading wanders by about ``i pi`` over the
  exposure), plus impulsive shakes: with probability ``0.05 i`` per step the heading jumps by
  ``N(0, (i pi / 2)^2)``;
* speed ``v_t = exp(sum_{s<=t} 0.2 i eta_s)`` (a log-normal random walk: the camera slows down and
  speeds up);
* path length ``ell = (0.3 + 0.7 i) (k - 1)`` pixels, then centred on its bounding box and shrunk if
  needed to fit in the ``k x k`` support around the anchor ``k // 2`` with a half-pixel margin.

``i`` is the ``intensity`` in ``[0, 1]`` (DPS uses 0.5): it sets both the length and how erratic
the path is; ``i = 0`` gives a straight line of length ``0.3 (k - 1)``. The path is sampled densely
at uniform *time* (so the exposure is proportional to the time spent at a place), splatted
bilinearly on a canvas ``s = 4`` times finer than the kernel, smoothed there by a Gaussian of
standard deviation ``s / 2`` canvas pixels (half a kernel pixel), box-averaged down to ``k x k``
(area anti-aliasing, where the ``motionblur`` package uses a LANCZOS resize) and normalised to sum
to 1.

``motion_kernel(..., length=, width=)`` sets the path length (pixels, any value ``>= 0``: ``0`` is a
point) and the standard deviation of the smoothing "pen" (kernel pixels, ``0``: none) directly;
the defaults are the ones above (``length = (0.3 + 0.7 i)(k - 1)``, ``width = 0.5``), so the
default kernels are unchanged. The pen is truncated at two standard deviations.

**Pixel-integrated kernels** (:func:`integrated_gaussian_kernel`, :func:`airy_kernel`,
:func:`disk_kernel`): a continuous point-spread function ``f(x, y)`` (``x`` along columns, ``y``
along rows, in pixels from the anchor) integrated over each pixel's area, then normalised to sum 1
on the window (mass outside the window is dropped). Sampling ``f`` at pixel centres only, as
:func:`gaussian_kernel` does, is wrong for PSFs narrower than a pixel (a sampled Gaussian of std
0.3 px has a second moment of 0.008 px², not 0.09); the pixel integral is what a sensor records.
The smooth PSFs (Gaussian, Airy) are integrated by a composite Gauss-Legendre rule, 3 cells of 7
nodes per axis and pixel (error below 1e-12 for a Gaussian of std 0.3 px, checked against the
exact second moment in the tests); the disk's hard edge by the midpoint rule on 31 x 31 points
(accurate to about ``1 / (31 R)`` of the mass).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.physics.base import check_int, check_positive

#: tolerance on ``|sum(k) - 1|`` when validating a user kernel (float32 rounding of a 64x64 sum)
SUM_TOL = 1e-4


def check_kernel(kernel: Tensor, name: str = "kernel") -> Tensor:
    """Validate a blur kernel: ``(kh, kw)`` or ``(B, kh, kw)``, finite, ``>= 0``, each sums to 1."""
    if not isinstance(kernel, Tensor):
        kernel = torch.as_tensor(kernel, dtype=torch.float32)
    if kernel.ndim not in (2, 3) or kernel.shape[-1] < 1 or kernel.shape[-2] < 1:
        raise ShapeError(f"{name} must have shape (kh, kw) or (B, kh, kw); "
                         f"got {tuple(kernel.shape)}")
    if not kernel.is_floating_point():
        kernel = kernel.float()
    if not torch.isfinite(kernel).all():
        raise NonFiniteError(f"{name} contains NaN/Inf")
    if (kernel < 0).any():
        raise DiffinvError(f"{name} has negative entries (min {kernel.min().item():.3g}); a blur "
                           "kernel must be non-negative")
    sums = kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1]).double().sum(-1)
    worst = (sums - 1).abs().max().item()
    if worst > SUM_TOL:
        raise DiffinvError(f"{name} must sum to 1; sum is off by {worst:.3g}")
    return kernel


def gaussian_kernel(size: int, std: Tensor | float, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    r"""Sampled, normalised, isotropic Gaussian ``k[a, b] = g[a] g[b]``, ``g[t] ∝ e^{-(t-c)²/2s²}``.

    ``c = size // 2`` (the blur anchor) and ``g`` sums to 1, so ``k`` sums to 1. ``std`` is a float
    or a ``(B,)`` tensor (then the result is ``(B, size, size)``); differentiable in ``std``.
    """
    size = check_int(size, "kernel size")
    if not isinstance(std, Tensor):
        std = torch.tensor(check_positive(std, "Gaussian std"), dtype=dtype or torch.float32,
                           device=device)
    dtype = dtype or std.dtype
    std = std.to(dtype=dtype, device=device if device is not None else std.device)
    t = torch.arange(size, dtype=dtype, device=std.device) - size // 2
    s = std.reshape(-1, 1) if std.ndim else std.reshape(1, 1)
    g = torch.exp(-0.5 * (t / s) ** 2)
    g = g / g.sum(-1, keepdim=True)
    k = g[:, :, None] * g[:, None, :]
    return k if std.ndim else k[0]


# ---------------------------------------------------------------- motion kernels
_STEPS = 64
_SUPERSAMPLE = 4


def _trajectory(intensity: float, size: int, generator: torch.Generator,
                length: float | None = None) -> Tensor:
    """Random camera path: ``(T + 1, 2)`` points (float64, kernel-pixel units), centred at 0."""
    T, i = _STEPS, intensity
    g = generator
    phi0 = 2 * math.pi * torch.rand((), generator=g, dtype=torch.float64)
    sigma_omega = i * math.pi / math.sqrt(T ** 3 / 3)
    omega = torch.cumsum(sigma_omega * torch.randn(T, generator=g, dtype=torch.float64), 0)
    jerk = (torch.rand(T, generator=g, dtype=torch.float64) < 0.05 * i).double()
    jerk = jerk * (0.5 * i * math.pi) * torch.randn(T, generator=g, dtype=torch.float64)
    phi = phi0 + torch.cumsum(omega + jerk, 0)
    speed = torch.exp(torch.cumsum(0.2 * i * torch.randn(T, generator=g, dtype=torch.float64), 0))
    step = speed[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], 1)
    if length is None:
        length = (0.3 + 0.7 * i) * (size - 1)
    step = step * (length / speed.sum())
    pts = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.cumsum(step, 0)])
    lo, hi = pts.min(0).values, pts.max(0).values
    pts = pts - (lo + hi) / 2
    extent = (hi - lo).max().item()
    # room around the anchor size // 2, keeping half a pixel for the smoothing
    room = 2 * min(size // 2, size - 1 - size // 2) - 0.5
    if extent > room > 0:
        pts = pts * (room / extent)
    elif room <= 0:
        pts = pts * 0
    return pts


def _rasterise(pts: Tensor, size: int, width: float = 0.5) -> Tensor:
    """Splat a path sampled at uniform time on the fine canvas, smooth (a Gaussian pen of std
    ``width`` kernel pixels, truncated at 2 std), box-average, normalise."""
    s = _SUPERSAMPLE
    n = size * s
    T = pts.shape[0] - 1
    seg = (pts[1:] - pts[:-1]).norm(dim=1).max().item() * s
    sub = max(1, math.ceil(seg / 0.25))  # at most a quarter canvas pixel between samples
    t = torch.linspace(0, T, T * sub + 1, dtype=torch.float64)
    j = t.floor().clamp(max=T - 1).long()
    frac = (t - j)[:, None]
    p = pts[j] * (1 - frac) + pts[j + 1] * frac
    # kernel pixel coordinate (centre at size // 2) -> canvas coordinate (pixel centres)
    c = (p + size // 2 + 0.5) * s - 0.5  # (N, 2) as (x, y)
    canvas = torch.zeros(n * n, dtype=torch.float64)
    x0, y0 = c[:, 0].floor(), c[:, 1].floor()
    fx, fy = c[:, 0] - x0, c[:, 1] - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        ok = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n)
        canvas.index_add_(0, (yi * n + xi)[ok], w[ok])
    canvas = canvas.reshape(1, 1, n, n)
    if width > 0:  # width 0.5: radius s, std s / 2 (the default kernels)
        r = math.ceil(2 * width * s - 1e-9)
        sm = gaussian_kernel(2 * r + 1, width * s, dtype=torch.float64)
        canvas = F.conv2d(F.pad(canvas, (r, r, r, r)), sm[None, None])
    k = F.avg_pool2d(canvas, s)[0, 0]
    return k / k.sum()


def motion_kernel(size: int, intensity: float, generator: torch.Generator, *,
                  length: float | None = None, width: float = 0.5) -> Tensor:
    """One random-trajectory motion kernel ``(size, size)`` (float64; see the module docstring).

    ``length``: path length in pixels (default ``(0.3 + 0.7 intensity)(size - 1)``; a longer path
    is shrunk to fit the window); ``width``: std of the smoothing pen in pixels (default 0.5)."""
    size = check_int(size, "kernel size")
    intensity = check_positive(intensity, "motion intensity", allow_zero=True)
    if intensity > 1:
        raise DiffinvError(f"motion intensity must be in [0, 1], got {intensity}")
    if length is not None:
        length = check_positive(length, "motion path length", allow_zero=True)
    width = check_positive(width, "motion pen width", allow_zero=True)
    return _rasterise(_trajectory(intensity, size, generator, length), size, width)


def motion_kernels(generators: Sequence[torch.Generator], size: int, intensity: float, *,
                   dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> Tensor:
    """One motion kernel per generator: ``(B, size, size)``."""
    ks = [motion_kernel(size, intensity, g) for g in generators]
    return torch.stack(ks).to(dtype=dtype, device=device)


# ---------------------------------------------------------------- pixel-integrated kernels
#: per axis, each pixel is split into ``cells`` equal cells with ``order`` Gauss-Legendre nodes
#: each (see the module docstring); odd both, so that a node sits at the PSF's centre and a PSF of
#: any positive size has mass (a PSF far narrower than the nodes' spacing becomes the point, its
#: limit)
QUADRATURE_SMOOTH = (3, 7)
QUADRATURE_EDGE = (31, 1)  # the midpoint rule, for the disk's hard edge


def _nodes(ss: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre nodes and weights on ``[-1/2, 1/2]`` (weights sum to 1)."""
    import numpy as np

    cells, order = ss
    xi, wi = np.polynomial.legendre.leggauss(order)
    d = 1.0 / cells
    mid = (np.arange(cells) + 0.5) * d - 0.5
    nodes = (mid[:, None] + 0.5 * d * xi[None, :]).ravel()
    weights = np.tile(0.5 * d * wi, cells)
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def pixel_integrated(size: int, psf, quadrature: tuple[int, int] = QUADRATURE_SMOOTH) -> Tensor:
    """``(size, size)`` float64 kernel: ``psf(x, y)`` integrated over each pixel (composite
    Gauss-Legendre rule ``quadrature = (cells, order)`` per axis), normalised to sum 1 on the
    window. ``x`` runs along columns, ``y`` along rows, in pixels from the anchor ``size // 2``."""
    size = check_int(size, "kernel size")
    cells, order = (check_int(v, "quadrature") for v in quadrature)
    t, w = _nodes((cells, order))
    c = torch.arange(size, dtype=torch.float64) - size // 2
    pos = c[:, None] + t[None, :]  # (size, n)
    y = pos[:, None, :, None]
    x = pos[None, :, None, :]
    k = (psf(x, y) * (w[:, None] * w[None, :])).sum((-2, -1))
    total = k.sum()
    if not torch.isfinite(total) or total <= 0:
        raise DiffinvError("the point-spread function has no mass on the kernel window")
    return k / total


def integrated_gaussian_kernel(size: int, std: float, std_minor: float | None = None,
                               angle: float = 0.0) -> Tensor:
    """Pixel-integrated Gaussian ``(size, size)`` (float64): standard deviations ``std`` along
    the major axis, at ``angle`` radians from the ``+x`` (column) axis towards ``+y`` (rows), and
    ``std_minor`` across it (default ``std``: isotropic)."""
    s1 = check_positive(std, "Gaussian std")
    s2 = s1 if std_minor is None else check_positive(std_minor, "Gaussian minor-axis std")
    a = float(angle)
    if not math.isfinite(a):
        raise DiffinvError(f"Gaussian angle must be finite, got {angle!r}")
    c, s = math.cos(a), math.sin(a)

    def psf(x: Tensor, y: Tensor) -> Tensor:
        u, v = c * x + s * y, -s * x + c * y
        return torch.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))

    return pixel_integrated(size, psf)


#: first zero of the Bessel function J1: the Airy pattern's first dark ring
AIRY_FIRST_ZERO = 3.8317059702075125


def airy_kernel(size: int, radius: float) -> Tensor:
    """Pixel-integrated Airy pattern ``(2 J1(q) / q)^2``, ``q = 3.8317 r / radius`` (float64):
    ``radius`` (pixels) is the first dark ring's (``1.22 lambda N``)."""
    r0 = check_positive(radius, "Airy radius")

    def psf(x: Tensor, y: Tensor) -> Tensor:
        q = AIRY_FIRST_ZERO * torch.sqrt(x * x + y * y) / r0
        safe = torch.where(q > 1e-8, q, torch.ones_like(q))
        return torch.where(q > 1e-8, (2 * torch.special.bessel_j1(safe) / safe) ** 2,
                           torch.ones_like(q))

    return pixel_integrated(size, psf)


def disk_kernel(size: int, radius: float) -> Tensor:
    """Pixel-integrated uniform disk of ``radius`` pixels (geometric defocus; float64)."""
    R = check_positive(radius, "disk radius")
    return pixel_integrated(size, lambda x, y: (x * x + y * y <= R * R).double(),
                            QUADRATURE_EDGE)
