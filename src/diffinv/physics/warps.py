r"""Rotation and zoom blur: means of warps, linear in ``x``, spatially variant (no convolution).

With ``W_g x`` the bilinear resampling of ``x`` at the source positions ``g(p)`` of the output
pixels ``p`` (pixel coordinates, centre ``c = ((H - 1)/2, (W - 1)/2)``, edge pixels repeated
outside the frame: ``grid_sample(..., padding_mode="border", align_corners=True)``):

* **rotation blur** (CL-DPS, methods.md 6.4): ``A x = (1/M) \sum_m W_{g_m} x`` with
  ``g_m(p) = c + R(\alpha_m)(p - c)``, ``\alpha_m`` evenly spaced on ``[-\theta, \theta]``
  (``theta`` in degrees; 9 rotations over +-15 deg by default; blind: ``theta ~ U(5, 25)`` deg);
* **zoom blur** (ImageNet-C style): ``A x = (1/M) \sum_m W_{g_m} x`` with
  ``g_m(p) = c + (p - c)/z_m`` (zoom in by ``z_m`` about the centre, cropped back to the frame),
  ``z_m`` evenly spaced on ``[1, z]`` so the first term is ``x`` itself, as ImageNet-C averages
  ``x`` with its zooms (``z = 1.25`` and 9 zooms by default; blind: ``z ~ U(1.1, 1.4)``).

CL-DPS's own definitions were not available (methods.md 6.4): these are the common ones it names.
With ``M = 1`` the single warp is the end point (a rotation by ``theta``, a zoom by ``z``). Both are
linear in ``x``; the adjoint is the exact vector-Jacobian product of the bilinear resampling (the
transpose of its interpolation weights). Both are differentiable in ``theta`` and ``z``. A constant
image is preserved (the weights of every output pixel sum to 1), and ``theta = 0`` or ``z = 1``
give the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics.base import Operator, check_int, check_positive, per_image


def _offsets(n: int, dtype: torch.dtype, device: torch.device, lo: float) -> Tensor:
    if n == 1:
        return torch.ones(1, dtype=dtype, device=device)
    return torch.linspace(lo, 1.0, n, dtype=dtype, device=device)


def _pixel_grid(H: int, W: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel coordinates relative to the centre: ``(dx, dy)`` each ``(H, W)``."""
    ys = torch.arange(H, dtype=dtype, device=device) - (H - 1) / 2
    xs = torch.arange(W, dtype=dtype, device=device) - (W - 1) / 2
    dy, dx = torch.meshgrid(ys, xs, indexing="ij")
    return dx, dy


def warp_mean(x: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
    """Mean over ``m`` of bilinear samples of ``x`` at source pixel positions ``(sx, sy)[:, m]``.

    ``sx, sy``: ``(B, M, H, W)`` absolute pixel coordinates.
    """
    B, C, H, W = x.shape
    M = sx.shape[1]
    grid = torch.stack([2 * sx / (W - 1) - 1, 2 * sy / (H - 1) - 1], dim=-1)
    xs = x[:, None].expand(B, M, C, H, W).reshape(B * M, C, H, W)
    out = F.grid_sample(xs, grid.reshape(B * M, H, W, 2), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.reshape(B, M, C, H, W).mean(1)


class _WarpBlur(Operator):
    linear = True

    def out_shape(self, in_shape):
        shape = tuple(int(v) for v in in_shape)
        if len(shape) != 4 or shape[-1] < 2 or shape[-2] < 2:
            raise ShapeError(f"{type(self).__name__} needs images of at least 2x2, got {shape}")
        return shape

    def _uniform(self, generators, lo: float, hi: float, name: str, device, dtype):
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
        return {name: (lo + (hi - lo) * u).to(dtype=dtype, device=device)}


def _range(r, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise DiffinvError(f"{name} must be (low, high) with low <= high, got {r}")
    return lo, hi


class RotationBlur(_WarpBlur):
    """Mean of ``n`` bilinear rotations over ``[-theta, theta]`` degrees about the centre."""

    description = "rotation blur: mean of n rotations over [-theta, theta] deg (not a convolution)"

    def __init__(self, theta: float = 15.0, n: int = 9, blind: bool = False,
                 theta_range: tuple[float, float] = (5.0, 25.0)):
        super().__init__()
        self.theta = check_positive(theta, "rotation angle theta", allow_zero=True)
        self.n = check_int(n, "number of rotations n")
        self.theta_range = _range(theta_range, "theta_range")
        self.blind = bool(blind)
        self.param_names = ("theta",)
        self.required_params = ("theta",) if self.blind else ()
        if self.blind:
            self.description = "blind rotation blur: theta ~ U(theta_range) deg per image"

    def config(self) -> dict:
        return {"theta": self.theta, "n": self.n, "blind": self.blind,
                "theta_range": list(self.theta_range)}

    def apply(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        th = per_image(self.theta if theta is None else theta, B, like=x)
        ang = torch.deg2rad(th)[:, None] * _offsets(self.n, x.dtype, x.device, -1.0)  # (B, M)
        dx, dy = _pixel_grid(H, W, x.dtype, x.device)
        cos, sin = torch.cos(ang)[..., None, None], torch.sin(ang)[..., None, None]
        sx = (W - 1) / 2 + cos * dx - sin * dy
        sy = (H - 1) / 2 + sin * dx + cos * dy
        return warp_mean(x, sx, sy)

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        if not self.blind:
            return {}
        return self._uniform(generators, *self.theta_range, "theta", device, dtype)


class ZoomBlur(_WarpBlur):
    """Mean of ``n`` centred zooms by factors evenly spaced on ``[1, z]``, cropped to the frame."""

    description = "zoom blur: mean of n centred zooms from 1 to z (not a convolution)"

    def __init__(self, z: float = 1.25, n: int = 9, blind: bool = False,
                 z_range: tuple[float, float] = (1.1, 1.4)):
        super().__init__()
        self.z = check_positive(z, "zoom factor z")
        self.n = check_int(n, "number of zooms n")
        self.z_range = _range(z_range, "z_range")
        if self.z_range[0] <= 0:
            raise DiffinvError(f"z_range must be positive, got {z_range}")
        self.blind = bool(blind)
        self.param_names = ("z",)
        self.required_params = ("z",) if self.blind else ()
        if self.blind:
            self.description = "blind zoom blur: z ~ U(z_range) per image"

    def config(self) -> dict:
        return {"z": self.z, "n": self.n, "blind": self.blind, "z_range": list(self.z_range)}

    def apply(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        zz = per_image(self.z if z is None else z, B, like=x)
        if (zz <= 0).any():
            raise DiffinvError("zoom factor z must be > 0")
        zm = 1 + (zz[:, None] - 1) * _offsets(self.n, x.dtype, x.device, 0.0)  # (B, M)
        dx, dy = _pixel_grid(H, W, x.dtype, x.device)
        inv = (1 / zm)[..., None, None]
        return warp_mean(x, (W - 1) / 2 + inv * dx, (H - 1) / 2 + inv * dy)

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        if not self.blind:
            return {}
        return self._uniform(generators, *self.z_range, "z", device, dtype)
