r"""Kernel error of blind deconvolution: MSE between an estimated and the true blur kernel after
centring both.

A blind method recovers a kernel only up to a translation (shifting the kernel one way and the
image the other leaves ``k * x`` unchanged), so the kernels are compared after moving each one's
centre of mass ``c = sum_p p k[p] / sum_p k[p]`` to the centre of a common zero-padded canvas
(``S = max(k_est, k_true) + 4`` px, integer shifts). The error is
``(1 / S^2) sum_p (k_est[p] - k_true[p])^2`` per image, on kernels normalised to sum 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import ShapeError


def _centred(k: Tensor, size: int) -> Tensor:
    """``k`` (B, h, w) normalised to sum 1, zero-padded to ``size`` and rolled so that its centre
    of mass is at ``size // 2`` (to the nearest pixel)."""
    B, h, w = k.shape
    k = k / k.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    top, left = (size - h) // 2, (size - w) // 2
    canvas = F.pad(k, (left, size - w - left, top, size - h - top))
    idx = torch.arange(size, dtype=k.dtype, device=k.device)
    out = []
    for b in range(B):
        cy = float((canvas[b].sum(1) * idx).sum())
        cx = float((canvas[b].sum(0) * idx).sum())
        out.append(torch.roll(canvas[b], (round(size // 2 - cy), round(size // 2 - cx)), (0, 1)))
    return torch.stack(out)


def kernel_mse(estimate: Tensor, truth: Tensor) -> Tensor:
    """Per-image MSE (B,) between kernels ``estimate`` and ``truth`` (B, h, w) after centring."""
    if estimate.ndim != 3 or truth.ndim != 3 or estimate.shape[0] != truth.shape[0]:
        raise ShapeError(f"kernels must be (B, h, w) with the same B; got "
                         f"{tuple(estimate.shape)} and {tuple(truth.shape)}")
    size = max(estimate.shape[-1], estimate.shape[-2], truth.shape[-1], truth.shape[-2]) + 4
    a = _centred(estimate.double(), size)
    b = _centred(truth.double().to(a.device), size)
    return (a - b).pow(2).mean((-2, -1))
