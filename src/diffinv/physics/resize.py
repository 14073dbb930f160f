r"""Super-resolution operators: average pooling (with an exact SVD) and antialiased bicubic.

**Average pooling** by an integer factor ``s``:
``y[i, j] = s^{-2} \sum_{a,b<s} x[s i + a, s j + b]`` (DAVI's SR operator). On each ``s x s``
block it is the row vector ``s^{-2} 1^T``, whose SVD is ``1 \cdot (1/s) \cdot q_1^T`` with
``q_1 = 1/s`` (the normalised all-ones vector). Completing ``q_1`` to an orthogonal ``Q`` (the
Householder reflection that maps ``e_1`` to ``q_1``) gives ``V^T x = Q^T (\text{block})``,
singular values ``1/s`` and ``U = I``.

**Bicubic** downscaling by ``s`` (as DPS's MATLAB-style ``Resizer``): output pixel ``i`` sits at
input coordinate ``c_i = (i + 1/2) s - 1/2``; with antialiasing, the Keys cubic (``a = -1/2``) is
stretched by ``s``: ``w_{ij} ∝ \mathrm{cubic}((j - c_i)/s)``, normalised so each row sums to 1;
taps outside the image are folded back symmetrically (MATLAB ``imresize``). The operator is
separable, ``y = M_h x M_w^T``, and its adjoint is the explicit transpose ``M_h^T y M_w``. Away from
the borders it agrees with ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``
(which truncates and renormalises at the borders instead of folding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import ShapeError
from diffinv.physics.base import Operator, Shape, check_int
from diffinv.physics.svd import SVD, DiagonalSVD


def _divisible(in_shape: Sequence[int], s: int, what: str) -> Shape:
    shape = tuple(int(v) for v in in_shape)
    if len(shape) != 4:
        raise ShapeError(f"expected (B, C, H, W), got {shape}")
    H, W = shape[-2:]
    if H % s or W % s:
        raise ShapeError(f"{what}: image size {H}x{W} is not divisible by the factor {s}")
    return (*shape[:2], H // s, W // s)


class AvgPoolSVD(SVD):
    """SVD of ``s x s`` average pooling (see the module docstring)."""

    def __init__(self, in_shape: Sequence[int], factor: int):
        C, H, W = tuple(in_shape)[-3:]
        s = factor
        super().__init__((C, H, W), (C, H // s, W // s))
        self.s = s
        q = s * s
        # Householder reflection Q = I - 2 w w^T / (w^T w), w = e1 - 1/s: orthogonal, symmetric,
        # Q e1 = 1/s (the normalised all-ones vector).
        w = -torch.full((q,), 1.0 / s, dtype=torch.float64)
        w[0] += 1.0
        Q = torch.eye(q, dtype=torch.float64)
        if w.norm() > 0:
            Q = Q - 2 * torch.outer(w, w) / (w @ w)
        self.Q = Q  # float64; cast to the input's dtype where used
        self._s = torch.full((1, self.m), 1.0 / s)

    def _blocks(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, nb, s*s)
        B, C, H, W = x.shape
        s = self.s
        b = x.reshape(B, C, H // s, s, W // s, s).permute(0, 1, 2, 4, 3, 5)
        return b.reshape(B, C, (H // s) * (W // s), s * s)

    def singulars(self) -> Tensor:
        return self._s

    def vt(self, x: Tensor) -> Tensor:
        c = self._blocks(x) @ self.Q.to(x)  # Q symmetric: rows of Q^T b
        B = x.shape[0]
        return torch.cat([c[..., 0].reshape(B, -1), c[..., 1:].reshape(B, -1)], dim=1)

    def v(self, c: Tensor) -> Tensor:
        C, H, W = self.in_shape
        s, B = self.s, c.shape[0]
        nb = (H // s) * (W // s)
        first = c[:, : self.m].reshape(B, C, nb, 1)
        rest = c[:, self.m:].reshape(B, C, nb, s * s - 1)
        b = torch.cat([first, rest], dim=-1) @ self.Q.to(c)
        b = b.reshape(B, C, H // s, W // s, s, s).permute(0, 1, 2, 4, 3, 5)
        return b.reshape(B, C, H, W)

    def ut(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], -1)

    def u(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.out_shape)


class AvgPoolSR(Operator):
    """Super-resolution by ``factor x factor`` average pooling (SVD-capable)."""

    description = "super-resolution by average pooling (factor s; SVD-capable)"
    linear = True
    has_svd = True

    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = check_int(factor, "SR factor")

    def out_shape(self, in_shape):
        return _divisible(in_shape, self.factor, "average-pooling SR")

    def in_shape(self, out_shape):
        B, C, h, w = tuple(int(v) for v in out_shape)
        return (B, C, h * self.factor, w * self.factor)

    def apply(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def apply_adjoint(self, y: Tensor) -> Tensor:
        s = self.factor
        return y.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1) / (s * s)

    def svd(self, in_shape, **params) -> SVD:
        """Exact SVD factors for images of shape ``in_shape = (B, C, H, W)`` (float32, CPU; move
        them with ``.to(device, dtype)``)."""
        self.out_shape(in_shape)
        self._check_params(params, int(in_shape[0]))
        if self.factor == 1:
            return DiagonalSVD(tuple(in_shape)[-3:], torch.ones(1, 1, *tuple(in_shape)[-2:]))
        return AvgPoolSVD(in_shape, self.factor)


def keys_cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel (``a = -1/2``: the MATLAB/PIL bicubic)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


@lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, factor: int, antialias: bool = True) -> Tensor:
    """``(n_in // factor, n_in)`` float64 matrix of 1-D bicubic downscaling by ``factor``."""
    s = factor
    n_out = n_in // s
    scale = s if antialias else 1
    support = 2 * scale
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        c = (i + 0.5) * s - 0.5
        j = torch.arange(math.floor(c - support), math.ceil(c + support) + 1)
        w = keys_cubic((j - c).double() / scale)
        w = w / w.sum()
        # symmetric folding of out-of-range taps: -1 -> 0, n -> n - 1
        jj = j.clone()
        for _ in range(4):  # (enough for taps within a few image lengths)
            jj = torch.where(jj < 0, -jj - 1, jj)
            jj = torch.where(jj >= n_in, 2 * n_in - 1 - jj, jj)
        M.index_put_((torch.full_like(jj, i), jj), w, accumulate=True)
    return M


class BicubicSR(Operator):
    """Super-resolution by antialiased bicubic downscaling (separable; explicit transpose)."""

    description = "super-resolution by antialiased bicubic downscaling (factor s, MATLAB-style)"
    linear = True

    def __init__(self, factor: int = 4, antialias: bool = True):
        super().__init__()
        self.factor = check_int(factor, "SR factor")
        self.antialias = bool(antialias)

    def out_shape(self, in_shape):
        return _divisible(in_shape, self.factor, "bicubic SR")

    def in_shape(self, out_shape):
        B, C, h, w = tuple(int(v) for v in out_shape)
        return (B, C, h * self.factor, w * self.factor)

    def _mats(self, H: int, W: int, like: Tensor) -> tuple[Tensor, Tensor]:
        mh = bicubic_matrix(H, self.factor, self.antialias).to(like.device, like.dtype)
        mw = bicubic_matrix(W, self.factor, self.antialias).to(like.device, like.dtype)
        return mh, mw

    def apply(self, x: Tensor) -> Tensor:
        mh, mw = self._mats(*x.shape[-2:], x)
        return torch.einsum("oh,bchw,pw->bcop", mh, x, mw)

    def apply_adjoint(self, y: Tensor) -> Tensor:
        H, W = (v * self.factor for v in y.shape[-2:])
        mh, mw = self._mats(H, W, y)
        return torch.einsum("oh,bcop,pw->bchw", mh, y, mw)
