r"""Diagonal operators: inpainting masks and the identity (denoising).

Inpainting keeps the full frame: ``y = m \odot x`` with ``m`` in ``{0, 1}`` (1 = observed), one mask
per image shared across channels, as in DPS. ``A = A^T = diag(m)``, so the SVD is ``U = V = I`` and
``s = m`` (zeros mark the unobserved pixels).

* random inpainting: exactly ``round(p H W)`` pixel locations removed, chosen uniformly without
  replacement (a random permutation from the image's generator); ``p = 0.7`` by default (DESIGN.md;
  DPS's config instead draws ``p ~ U(0.3, 0.7)``, and shares one mask across a run, where we draw
  one per image);
* box inpainting: one ``box x box`` square removed, its top-left corner uniform on
  ``[margin, H - margin - box]`` x ``[margin, W - margin - box]`` (16x16 with a 2 px margin at
  32x32: DPS's 128x128 box at 256x256 scaled by 1/8 with its 16 px margin).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics.base import Operator, check_int, check_positive
from diffinv.physics.svd import DiagonalSVD


class Identity(Operator):
    """``y = x`` (denoising)."""

    description = "identity (denoising)"
    linear = True
    has_svd = True

    def apply(self, x: Tensor) -> Tensor:
        return x

    def apply_adjoint(self, y: Tensor) -> Tensor:
        return y

    def svd(self, in_shape: Sequence[int], **params: Tensor) -> DiagonalSVD:
        """``U = V = I``, ``s = 1``."""
        self._check_params(params, int(in_shape[0]))
        return DiagonalSVD(tuple(in_shape)[-3:], torch.ones(1, 1, *tuple(in_shape)[-2:]))


class _Inpaint(Operator):
    """``y = mask * x`` with a per-image ``mask`` of shape ``(B or 1, 1, H, W)``."""

    linear = True
    has_svd = True
    param_names = ("mask",)
    required_params = ("mask",)

    @staticmethod
    def _check_mask(m: Tensor, shape: Sequence[int]) -> Tensor:
        B, C, H, W = (int(v) for v in shape)
        if m.ndim != 4 or m.shape[0] not in (1, B) or m.shape[1] not in (1, C) \
                or tuple(m.shape[-2:]) != (H, W):
            raise ShapeError(f"mask of shape {tuple(m.shape)} does not fit images of shape "
                             f"{(B, C, H, W)}; expected (B, 1, H, W)")
        return m

    def apply(self, x: Tensor, mask: Tensor) -> Tensor:
        return self._check_mask(mask, x.shape).to(dtype=x.dtype, device=x.device) * x

    def apply_adjoint(self, y: Tensor, mask: Tensor) -> Tensor:
        return self.apply(y, mask)

    def svd(self, in_shape: Sequence[int], **params: Tensor) -> DiagonalSVD:
        """``U = V = I`` and ``s = mask`` (broadcast over channels)."""
        params = self._check_params(params, int(in_shape[0]))
        m = self._check_mask(params["mask"], in_shape)
        if (m < 0).any():
            raise DiffinvError("an inpainting mask must be non-negative")
        return DiagonalSVD(tuple(in_shape)[-3:], m)


class RandomInpaint(_Inpaint):
    """Random inpainting: a fraction ``p`` of the pixel locations removed (exact count)."""

    description = "random inpainting: fraction p of pixels removed"

    def __init__(self, p: float = 0.7):
        super().__init__()
        self.p = check_positive(p, "inpainting fraction p", allow_zero=True)
        if self.p > 1:
            raise DiffinvError(f"inpainting fraction p must be in [0, 1], got {p}")

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        H, W = (int(v) for v in tuple(image_shape)[-2:])
        n_drop = round(self.p * H * W)
        masks = []
        for g in generators:
            m = torch.ones(H * W)
            m[torch.randperm(H * W, generator=g)[:n_drop]] = 0
            masks.append(m.reshape(1, H, W))
        return {"mask": torch.stack(masks).to(dtype=dtype, device=device)}


class BoxInpaint(_Inpaint):
    """Box inpainting: one ``box x box`` square removed at a uniform position (``margin`` px)."""

    description = "box inpainting: one box x box square removed, uniform position"

    def __init__(self, box: int = 16, margin: int = 2):
        super().__init__()
        self.box = check_int(box, "box size")
        self.margin = check_int(margin, "box margin", minimum=0)

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        H, W = (int(v) for v in tuple(image_shape)[-2:])
        hi_r, hi_c = H - self.margin - self.box, W - self.margin - self.box
        if hi_r < self.margin or hi_c < self.margin:
            raise ShapeError(f"a {self.box}x{self.box} box with a {self.margin} px margin does not "
                             f"fit a {H}x{W} image")
        masks = []
        for g in generators:
            r = int(torch.randint(self.margin, hi_r + 1, (), generator=g))
            c = int(torch.randint(self.margin, hi_c + 1, (), generator=g))
            m = torch.ones(1, H, W)
            m[:, r:r + self.box, c:c + self.box] = 0
            masks.append(m)
        return {"mask": torch.stack(masks).to(dtype=dtype, device=device)}
