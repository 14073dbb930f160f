r"""Nonlinear deblurring: a non-uniform motion blur followed by a saturating camera response.

Our self-contained substitute for the bkse network that DPS uses for "nonlinear deblurring"
(whose ``GOPRO_wVAE.pth`` weights cannot be had offline; a user's file can be loaded with
:mod:`diffinv.physics.bkse`). Like bkse's output it is a spatially varying blur, and it is not
invertible: where the response saturates the measurement carries no information.

**Non-uniform blur.** ``K`` motion kernels ``k_1..k_K`` (one per anchor of a ``g x g`` grid,
``K = g^2``, anchors at the cell centres ``a_k``) are mixed by smooth position weights
(normalised Gaussian radial basis functions of width ``rho = 1/g`` in frame units ``[0, 1]^2``):

.. math:: (K x)(p) = \sum_k w_k(p)\,(k_k * x)(p), \qquad
          w_k(p) = \frac{e^{-|p - a_k|^2 / 2\rho^2}}{\sum_j e^{-|p - a_j|^2 / 2\rho^2}}.

**Camera response.** On ``[0, 1]`` intensities ``u = (Kx + 1)/2`` the sensor saturates,
``v = \mathrm{clip}(g_c u, 0, 1)`` with gain ``g_c = 1.5`` (everything brighter than ``2/3`` clips
to white); back in ``[-1, 1]``: ``y = 2 v - 1``. The kernels (``kernels``, ``(B, K, k, k)``) are
drawn per image with :func:`~diffinv.physics.kernels.motion_kernel`; the operator is not blind
(the kernels are public, as bkse's latent is fixed and known in DMPlug's set-up).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics.base import Operator, check_int, check_positive
from diffinv.physics.blur import blur, check_boundary
from diffinv.physics.kernels import motion_kernels


def position_weights(H: int, W: int, grid: int, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> Tensor:
    """``(grid^2, H, W)`` smooth partition of unity (normalised Gaussian RBFs on a grid)."""
    return _position_weights(H, W, grid).to(dtype=dtype, device=device)


@lru_cache(maxsize=16)
def _position_weights(H: int, W: int, grid: int) -> Tensor:
    rho = 1.0 / grid
    ys = (torch.arange(H, dtype=torch.float64) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float64) + 0.5) / W
    a = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    wy = torch.exp(-0.5 * ((ys[None, :] - a[:, None]) / rho) ** 2)  # (g, H)
    wx = torch.exp(-0.5 * ((xs[None, :] - a[:, None]) / rho) ** 2)  # (g, W)
    w = (wy[:, None, :, None] * wx[None, :, None, :]).reshape(grid * grid, H, W)
    return w / w.sum(0, keepdim=True)


class NonlinearBlur(Operator):
    """Non-uniform motion blur then saturating response ``y = 2 clip(g (Kx+1)/2, 0, 1) - 1``."""

    description = ("nonlinear deblur: non-uniform motion blur + saturating response clip(g Kx), "
                   "g = 1.5 (substitute for bkse)")
    linear = False
    param_names = ("kernels",)
    required_params = ("kernels",)

    def __init__(self, size: int = 9, intensity: float = 0.5, grid: int = 2, gain: float = 1.5,
                 boundary: str = "circular"):
        super().__init__()
        self.size = check_int(size, "kernel size")
        self.intensity = check_positive(intensity, "motion intensity", allow_zero=True)
        if self.intensity > 1:
            raise DiffinvError(f"motion intensity must be in [0, 1], got {intensity}")
        self.grid = check_int(grid, "kernel grid")
        self.gain = check_positive(gain, "camera gain")
        self.boundary = check_boundary(boundary)

    def config(self) -> dict:
        return {"size": self.size, "intensity": self.intensity, "grid": self.grid,
                "gain": self.gain, "boundary": self.boundary}

    def blur(self, x: Tensor, kernels: Tensor) -> Tensor:
        """The linear non-uniform blur ``K x`` (before the camera response)."""
        B, C, H, W = x.shape
        n = self.grid ** 2
        k = kernels.to(dtype=x.dtype, device=x.device)
        if k.ndim != 4 or k.shape[0] not in (1, B) or k.shape[1] != n:
            raise ShapeError(f"kernels must be (B, {n}, k, k); got {tuple(kernels.shape)}")
        w = position_weights(H, W, self.grid, dtype=x.dtype, device=x.device)
        out = torch.zeros_like(x)
        for j in range(n):
            out = out + w[j] * blur(x, k[:, j], self.boundary)
        return out

    def response(self, kx: Tensor) -> Tensor:
        """Saturating camera response on ``[0, 1]`` intensities, in ``[-1, 1]`` units."""
        return 2 * torch.clamp(self.gain * (kx + 1) / 2, 0.0, 1.0) - 1

    def apply(self, x: Tensor, kernels: Tensor) -> Tensor:
        return self.response(self.blur(x, kernels))

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        n = self.grid ** 2
        ks = [motion_kernels([g] * n, self.size, self.intensity, dtype=torch.float64)
              for g in generators]
        return {"kernels": torch.stack(ks).to(dtype=dtype, device=device)}

    @staticmethod
    def saturation_level(gain: float) -> float:
        """The ``[-1, 1]`` value of ``Kx`` above which the response is saturated: ``2/g - 1``."""
        return 2.0 / gain - 1.0 if math.isfinite(gain) and gain > 0 else math.nan
