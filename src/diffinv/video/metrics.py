r"""Warping error (Lai et al. 2018, "Learning Blind Video Temporal Consistency").

For a clip ``x`` (the output under test) and the flow of the *reference* video (the ground truth:
the generator's exact flow, or :func:`~diffinv.video.flow.estimate_flow` of the reference),

.. math:: \mathrm{WE}(x) = \frac{1}{T - 1} \sum_{t=0}^{T-2}
          \frac{\sum_{p, c} M_t(p)\,\big(\hat x_{t+1}(p) - x_t(p)\big)_c^2}{C \sum_p M_t(p)},
          \qquad \hat x_{t+1}(p) = x_{t+1}(p + \mathrm{flow}_t(p)),

on the [0, 1] display frame ``u = clip((x + 1) / 2, 0, 1)`` (as every diffinv metric), with the
bilinear backward warp of :mod:`diffinv.video.flow` and ``M_t`` the validity (non-occlusion) mask.
This is the reference ``evaluate_WarpError.py``: its mask is read as a 3-channel image, so its
normaliser counts channels too; a pair with no valid pixel contributes 0 (there it divides the
masked, all-zero sum by the pixel count). The paper reports WE x 1e-2.

Values to expect at 32x32: a ground-truth clip of bounce motion scores exactly 0 with its exact
flow (whole-pixel moves); smooth sub-pixel motions score the bilinear-interpolation floor of the
warp, up to ~4e-3 for fashion32 and ~1.5e-3 for mnist32 (0.4 and 0.15 in the paper's x1e-2 units):
report the ground truth's WE beside a method's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.errors import ShapeError
from diffinv.video.clips import batched, check_clip, check_flow, unbatched
from diffinv.video.flow import estimate_flow, in_frame, warp_backward


def _unit(x: Tensor) -> Tensor:
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def warping_error(x: Tensor, flow: Tensor, valid: Tensor | None = None) -> Tensor:
    """WE of clip(s) ``x`` under the reference ``flow`` and mask ``valid`` (default: the in-frame
    mask of the flow). ``x`` ``(T, C, H, W)`` -> a 0-d tensor; ``(B, T, C, H, W)`` -> ``(B,)``.
    Computed in float64 (float32 on MPS), returned in ``x``'s dtype."""
    check_clip(x, "x")
    check_flow(flow, x.shape, "flow")
    if valid is not None:
        check_flow(valid, x.shape, "valid", channels=1)
        if ((valid < 0) | (valid > 1)).any():
            raise ShapeError("valid must hold weights in [0, 1] (1 = a pixel with a "
                             "correspondent in the next frame)")
    dt = torch.float32 if x.device.type == "mps" else torch.float64
    x5, single = batched(x)
    f5, _ = batched(flow)
    B, T, C, H, W = x5.shape
    f = f5.to(device=x.device, dtype=dt).reshape(B * (T - 1), 2, H, W)
    m = (in_frame(f) if valid is None
         else batched(valid)[0].to(device=x.device, dtype=dt).reshape(B * (T - 1), 1, H, W))
    u = _unit(x5.to(dt))
    warped = warp_backward(u[:, 1:].reshape(B * (T - 1), C, H, W), f)
    sq = (warped - u[:, :-1].reshape(B * (T - 1), C, H, W)).square() * m
    n = m.sum(dim=(1, 2, 3)) * C
    per_pair = torch.where(n > 0, sq.sum(dim=(1, 2, 3)) / n.clamp(min=1e-12),
                           torch.zeros_like(n))
    return unbatched(per_pair.reshape(B, T - 1).mean(1), single).to(x.dtype)


def warping_error_estimated(x: Tensor, ref: Tensor, method: str = "dis",
                            **flow_options) -> Tensor:
    """WE of ``x`` with the flow and occlusion mask estimated on the reference clip ``ref`` (for
    videos without a known flow; needs OpenCV: :func:`~diffinv.video.flow.estimate_flow`)."""
    check_clip(x, "x")
    check_clip(ref, "ref")
    if x.shape != ref.shape:
        raise ShapeError(f"x {tuple(x.shape)} and ref {tuple(ref.shape)} must have the same shape")
    flow, valid = estimate_flow(ref, method, **flow_options)
    return warping_error(x, flow, valid)
