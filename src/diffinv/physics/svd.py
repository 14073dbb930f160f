"""Fast singular value decompositions ``A = U diag(s) V^T`` of structured linear operators.

Used by the SVD-domain solvers (DDRM, PiGDM, DMPS). For an operator from ``R^n`` (images of shape
``(C, H, W)``, ``n = C H W``) to ``R^m`` (measurements, ``m <= n``):

* ``vt(x)``: ``(B, C, H, W) -> (B, n)``, the coefficients ``V^T x``; the first ``m`` of them are the
  ones the singular values ``s`` act on, the last ``n - m`` span the null space of ``A``;
* ``v(c)``: ``(B, n) -> (B, C, H, W)``, its inverse (``V`` is orthogonal);
* ``ut(y)``: measurement ``-> (B, m)`` and ``u(c)``: ``(B, m) ->`` measurement (``U`` orthogonal);
* ``singulars()``: ``(B or 1, m)``, non-negative, not sorted (zeros are allowed: unobserved
  directions).

So ``A x = u(s * vt(x)[:, :m])`` and ``A^T y = v([s * ut(y), 0])``. Every factor is a fast transform
(an FFT, a block reshape, a mask), never a dense matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor


class SVD:
    """``A = U diag(s) V^T``; subclasses implement the four transforms and ``singulars``."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape = tuple(int(s) for s in in_shape)[-3:]
        self.out_shape = tuple(int(s) for s in out_shape)[-3:]
        self.n = math.prod(self.in_shape)
        self.m = math.prod(self.out_shape)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> SVD:
        """Move every tensor held by the factors (floating ones also to ``dtype``); in place."""
        for k, v in vars(self).items():
            if isinstance(v, Tensor):
                fl = v.is_floating_point()
                setattr(self, k, v.to(device=device, dtype=dtype if fl else None))
            elif isinstance(v, RealFourier) and device is not None:
                v.to_device(torch.device(device))
        return self

    def singulars(self) -> Tensor:
        raise NotImplementedError

    def vt(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def v(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    def ut(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def u(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    # --------------------------------------------------------------- derived operations
    def forward(self, x: Tensor) -> Tensor:
        """``A x = U (s * (V^T x)[:m])``."""
        return self.u(self.singulars().to(x) * self.vt(x)[:, : self.m])

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y = V [s * U^T y, 0]``."""
        return self.v(self.add_zeros(self.singulars().to(y) * self.ut(y)))

    def pinv(self, y: Tensor, eps: float = 0.0) -> Tensor:
        """Pseudo-inverse ``A^+ y = V [s^+ U^T y, 0]`` where ``s^+ = 1/s`` for ``s > eps``."""
        s = self.singulars().to(y)
        keep = s > eps
        s_inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)),
                            torch.zeros_like(s))
        return self.v(self.add_zeros(s_inv * self.ut(y)))

    def add_zeros(self, c: Tensor) -> Tensor:
        """Pad ``(B, m)`` coefficients with zeros to ``(B, n)``."""
        if self.n == self.m:
            return c
        return torch.cat([c, c.new_zeros(c.shape[0], self.n - self.m)], dim=1)


class DiagonalSVD(SVD):
    """``A = diag(d)`` with ``d >= 0`` (a mask, or the identity): ``U = V = I``, ``s = d``.

    ``diag`` has shape ``(B or 1, 1 or C, H, W)`` and is broadcast over channels.
    """

    def __init__(self, in_shape: Sequence[int], diag: Tensor):
        super().__init__(in_shape, in_shape)
        self.diag = diag

    def singulars(self) -> Tensor:
        d = self.diag.expand(self.diag.shape[0], *self.in_shape)
        return d.reshape(d.shape[0], -1)

    def vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def v(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.in_shape)

    ut = vt
    u = v


@lru_cache(maxsize=32)
def _real_fourier_index(h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index tables of the real orthonormal Fourier basis of ``R^{h x w}`` (see RealFourier)."""
    wr = w // 2 + 1
    pair, selfc, pair_partner = [], [], []
    for u in range(h):
        for v in range(wr):
            mirrored_in_half = v == 0 or (w % 2 == 0 and v == w // 2)
            if not mirrored_in_half:
                pair.append(u * wr + v)
                pair_partner.append(-1)
                continue
            u2 = (-u) % h
            if u2 == u:
                selfc.append(u * wr + v)
            elif u < u2:
                pair.append(u * wr + v)
                pair_partner.append(u2 * wr + v)
    pair_t = torch.tensor(pair, dtype=torch.long)
    partner_t = torch.tensor(pair_partner, dtype=torch.long)
    self_t = torch.tensor(selfc, dtype=torch.long)
    assert len(selfc) + 2 * len(pair) == h * w
    has_partner = partner_t >= 0
    return pair_t, self_t, partner_t[has_partner], pair_t[has_partner]


class RealFourier:
    r"""The real orthonormal Fourier basis of images ``(H, W)``: ``T x`` and ``T^{-1} c = T^T c``.

    With the unitary DFT ``X = F x`` of a real image, ``X(-w) = conj X(w)``. Frequencies fall into
    self-conjugate ones (``w = -w``: ``X(w)`` is real) and conjugate pairs. Taking one
    representative ``w`` per pair, the real coefficients

    .. math:: c = [\sqrt2\,\mathrm{Re}\,X(w_\mathrm{pairs}),\; X(w_\mathrm{self}),\;
                   \sqrt2\,\mathrm{Im}\,X(w_\mathrm{pairs})]

    number exactly ``H W`` and, by Parseval, ``T`` is orthogonal. Layout: ``P`` pair real parts,
    ``S`` self-conjugate values, ``P`` pair imaginary parts, so pair ``k`` sits at ``k`` and
    ``P + S + k``. Computed with ``rfft2``/``irfft2``.
    """

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.pair, self.selfc, self.partner, self.partner_src = _real_fourier_index(h, w)
        self.P, self.S = len(self.pair), len(self.selfc)

    def forward(self, x: Tensor) -> Tensor:
        """``T x``: ``(..., H, W) -> (..., H W)``."""
        X = torch.fft.rfft2(x, norm="ortho").reshape(*x.shape[:-2], -1)
        p, s = X[..., self.pair], X[..., self.selfc]
        r2 = math.sqrt(2.0)
        return torch.cat([r2 * p.real, s.real, r2 * p.imag], dim=-1)

    def inverse(self, c: Tensor) -> Tensor:
        """``T^{-1} c = T^T c``: ``(..., H W) -> (..., H, W)``."""
        P, S = self.P, self.S
        r2 = math.sqrt(2.0)
        re = c.new_zeros(*c.shape[:-1], self.h * (self.w // 2 + 1))
        im = torch.zeros_like(re)
        re = re.index_copy(-1, self.pair, c[..., :P] / r2)
        re = re.index_copy(-1, self.selfc, c[..., P:P + S])
        im = im.index_copy(-1, self.pair, c[..., P + S:] / r2)
        if len(self.partner):
            # in the columns rfft keeps whole (v = 0, W/2) write the conjugate partner explicitly
            src = torch.searchsorted(self.pair, self.partner_src)
            re = re.index_copy(-1, self.partner, c[..., :P][..., src] / r2)
            im = im.index_copy(-1, self.partner, -c[..., P + S:][..., src] / r2)
        X = torch.complex(re, im).reshape(*c.shape[:-1], self.h, self.w // 2 + 1)
        return torch.fft.irfft2(X, s=(self.h, self.w), norm="ortho")

    def to_device(self, device: torch.device) -> RealFourier:
        self.pair, self.selfc = self.pair.to(device), self.selfc.to(device)
        self.partner, self.partner_src = self.partner.to(device), self.partner_src.to(device)
        return self
