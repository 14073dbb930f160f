r"""Error of an estimated blur kernel against the true one, up to a whole-pixel shift.

A blind method recovers a kernel only up to a translation (shifting the kernel by ``d`` and the
image by ``-d`` gives the same measurement), so kernels are compared *after centring*:

.. math::

    \mathrm{MSE}_c(\hat k, k) = \min_{|d_y|, |d_x| \le r}\ \frac{1}{k_h k_w}
    \sum_{a, b} \big(S_d \hat k\,[a, b] - k[a, b]\big)^2,

where ``S_d`` shifts the kernel by ``d`` with zeros filled in (mass shifted out of the support is
lost, which the minimum then avoids) and ``r = max_shift`` (default: half the kernel size). Both
kernels are ``(B, kh, kw)`` (or ``(kh, kw)``) of the same size; the result is ``(B,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import ShapeError


def centred_kernel_mse(estimate: Tensor, truth: Tensor, max_shift: int | None = None) -> Tensor:
    """Per-image MSE between kernels after the best whole-pixel shift (module docstring)."""
    e = estimate if estimate.ndim == 3 else estimate[None]
    t = truth if truth.ndim == 3 else truth[None]
    if e.shape != t.shape:
        raise ShapeError(f"kernels of shapes {tuple(estimate.shape)} and {tuple(truth.shape)} "
                         "cannot be compared (same (B, kh, kw) needed)")
    kh, kw = e.shape[-2:]
    r = max(kh, kw) // 2 if max_shift is None else int(max_shift)
    e, t = e.double(), t.double().to(e.device)
    padded = F.pad(e, (r, r, r, r))
    best = None
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            s = padded[:, r - dy:r - dy + kh, r - dx:r - dx + kw]
            mse = (s - t).square().flatten(1).mean(1)
            best = mse if best is None else torch.minimum(best, mse)
    assert best is not None
    return best.to(estimate.dtype)
