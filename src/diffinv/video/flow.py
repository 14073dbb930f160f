r"""Optical flow between consecutive frames: the convention, warping, and a classical estimator.

**Convention.** ``flow[t]`` (``t = 0 .. T - 2``) is a ``(2, H, W)`` field of pixel displacements
``(dx, dy)`` anchored at frame ``t``: the scene point seen at pixel ``p = (x, y)`` of frame ``t``
is seen at ``p + flow[t](p)`` in frame ``t + 1`` (OpenCV's ``calcOpticalFlow*(prev=t, next=t+1)``
and the "forward flow" of Lai et al. 2018). Pixel ``(x, y)`` is the centre of column ``x``, row
``y``; ``x`` runs along W, ``y`` along H.

Frame ``t + 1`` is brought onto frame ``t`` by **backward warping** along that flow,

.. math:: (W_t x_{t+1})(p) = x_{t+1}\big(p + \mathrm{flow}_t(p)\big),

sampled bilinearly (``grid_sample(align_corners=True)``). ``valid[t]`` ``(1, H, W)`` is 1 where
``p`` has a correspondent in frame ``t + 1``: inside the frame (all four bilinear neighbours) and
not occluded; 0 elsewhere (content leaving the frame, pixels covered at ``t + 1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.video.clips import batched, check_clip, unbatched

#: forward-backward consistency thresholds of Sundaram et al. 2010 (also UnFlow, Lai et al. 2018):
#: ``|f + b_w|^2 > ALPHA (|f|^2 + |b_w|^2) + BETA`` marks an occlusion
FB_ALPHA, FB_BETA = 0.01, 0.5
FLOW_METHODS = ("dis", "farneback")


def pixel_grid(H: int, W: int, *, dtype=torch.float32, device="cpu") -> Tensor:
    """``(2, H, W)``: the ``(x, y)`` pixel coordinates of every pixel."""
    ys = torch.arange(H, dtype=dtype, device=device)
    xs = torch.arange(W, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])


def sample_at(img: Tensor, pos: Tensor, *, mode: str = "bilinear",
              padding_mode: str = "border") -> Tensor:
    """Sample ``img`` ``(N, C, H, W)`` at absolute pixel positions ``pos`` ``(N, 2, H', W')``."""
    H, W = img.shape[-2:]
    gx = 2 * pos[:, 0] / max(W - 1, 1) - 1
    gy = 2 * pos[:, 1] / max(H - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1).to(img.dtype)
    return F.grid_sample(img, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def warp_backward(frames: Tensor, flow: Tensor) -> Tensor:
    """``frames[n]`` sampled at ``p + flow[n](p)``: ``(N, C, H, W)``, ``(N, 2, H, W)`` -> ``(N, C,
    H, W)``. Outside the frame the edge is repeated (such pixels are masked by :func:`in_frame`)."""
    if frames.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2 \
            or flow.shape[0] != frames.shape[0] or flow.shape[-2:] != frames.shape[-2:]:
        raise ShapeError(f"warp_backward needs frames (N, C, H, W) and flow (N, 2, H, W) of the "
                         f"same N, H, W; got {tuple(frames.shape)} and {tuple(flow.shape)}")
    H, W = frames.shape[-2:]
    pos = pixel_grid(H, W, dtype=flow.dtype, device=flow.device) + flow
    return sample_at(frames, pos)


def in_frame(flow: Tensor) -> Tensor:
    """``(N, 1, H, W)`` 1.0 where ``p + flow(p)`` lies in ``[0, W-1] x [0, H-1]`` (every bilinear
    neighbour inside the frame), else 0.0."""
    H, W = flow.shape[-2:]
    pos = pixel_grid(H, W, dtype=flow.dtype, device=flow.device) + flow
    eps = 1e-6 * max(H, W)
    ok = (pos[:, 0] >= -eps) & (pos[:, 0] <= W - 1 + eps) \
        & (pos[:, 1] >= -eps) & (pos[:, 1] <= H - 1 + eps)
    return ok[:, None].to(flow.dtype)


def warp_clip(x: Tensor, flow: Tensor) -> Tensor:
    """Every frame ``t + 1`` of a clip warped onto frame ``t``: ``(T, C, H, W)`` and ``(T - 1, 2,
    H, W)`` -> ``(T - 1, C, H, W)`` (batched: one more leading dimension on all three)."""
    from diffinv.video.clips import check_flow

    check_clip(x)
    check_flow(flow, x.shape)
    x5, single = batched(x)
    f5, _ = batched(flow)
    B, T, C, H, W = x5.shape
    nxt = x5[:, 1:].reshape(B * (T - 1), C, H, W)
    out = warp_backward(nxt, f5.reshape(B * (T - 1), 2, H, W).to(x.dtype))
    return unbatched(out.reshape(B, T - 1, C, H, W), single)


def fb_consistent(fw: Tensor, bw: Tensor, alpha: float = FB_ALPHA, beta: float = FB_BETA) -> Tensor:
    """Non-occlusion mask ``(N, 1, H, W)`` of the forward flow ``fw`` (anchored at frame ``t``)
    given the backward flow ``bw`` (anchored at ``t + 1``): 1 where ``p + fw(p)`` is in the frame and
    ``|fw + bw_w|^2 <= alpha (|fw|^2 + |bw_w|^2) + beta`` with ``bw_w(p) = bw(p + fw(p))``."""
    bw_w = warp_backward(bw, fw)
    err = (fw + bw_w).square().sum(1, keepdim=True)
    bound = alpha * (fw.square().sum(1, keepdim=True) + bw_w.square().sum(1, keepdim=True)) + beta
    return (err <= bound).to(fw.dtype) * in_frame(fw)


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise DiffinvError("flow estimation needs OpenCV, which is not installed: pip install "
                           "'diffinv[video]' (or opencv-python-headless)") from e
    return cv2


def _gray_uint8(frame: Tensor):
    import numpy as np

    u = ((frame.detach().double().cpu() + 1) * 0.5).clamp(0, 1).mean(0)  # channels -> gray
    return np.ascontiguousarray((u.numpy() * 255).round().astype(np.uint8))


def _upsampled(img, up: int, cv2):
    if up == 1:
        return img
    return cv2.resize(img, (img.shape[1] * up, img.shape[0] * up), interpolation=cv2.INTER_CUBIC)


def _pair_flow(a, b, method: str, up: int, cv2) -> Tensor:
    """Flow anchored at ``a`` towards ``b`` (uint8 gray frames), estimated at ``up`` times the size
    and brought back (displacements divided by ``up``, field area-averaged)."""
    import numpy as np

    A, Bf = _upsampled(a, up, cv2), _upsampled(b, up, cv2)
    if method == "farneback":
        f = cv2.calcOpticalFlowFarneback(A, Bf, None, pyr_scale=0.5, levels=3, winsize=15,
                                         iterations=5, poly_n=5, poly_sigma=1.1, flags=0)
    else:
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        f = dis.calc(A, Bf, None)
    t = torch.from_numpy(np.asarray(f, dtype=np.float64)).permute(2, 0, 1)[None]  # (1, 2, h, w)
    if up > 1:
        # pixel centres of the small frame sit at (up * x + (up - 1) / 2) in the large one
        t = F.avg_pool2d(t, up) / up
    return t[0]


def estimate_flow(x: Tensor, method: str = "dis", *, upsample: int = 4,
                  alpha: float = FB_ALPHA, beta: float = FB_BETA) -> tuple[Tensor, Tensor]:
    """Flow and non-occlusion mask of a clip without known motion, by OpenCV.

    Returns ``(flow, valid)`` of shapes ``(T - 1, 2, H, W)`` and ``(T - 1, 1, H, W)`` in the
    convention of this module (batched clips: a leading ``B`` on both), in ``x``'s dtype and
    device. Frames are mapped to 8-bit gray (mean of the channels), upsampled ``upsample`` times
    (bicubic; a 32x32 frame is too small for the estimators' windows), and both directions are
    estimated (``method`` ``"dis"``, OpenCV's DIS at its medium preset, or ``"farneback"``; on the
    generated clips' objects DIS at 4x is off by ~0.05 px on average). ``valid`` is the
    forward-backward consistency check (:func:`fb_consistent`, thresholds of Sundaram et al. 2010).
    Ruder et al.'s motion-boundary test used by Lai et al. is left out: at 32x32 a global rotation
    of 2 degrees per frame already exceeds its gradient threshold everywhere. Not differentiable.
    """
    cv2 = _cv2()
    if method not in FLOW_METHODS:
        raise DiffinvError(f"unknown flow method {method!r}; known: {', '.join(FLOW_METHODS)}")
    if isinstance(upsample, bool) or int(upsample) != upsample or upsample < 1:
        raise DiffinvError(f"upsample must be an integer >= 1, got {upsample!r}")
    check_clip(x)
    x5, single = batched(x)
    B, T = x5.shape[:2]
    flows, valids = [], []
    for b in range(B):
        g = [_gray_uint8(x5[b, t]) for t in range(T)]
        fw = torch.stack([_pair_flow(g[t], g[t + 1], method, int(upsample), cv2)
                          for t in range(T - 1)])
        bw = torch.stack([_pair_flow(g[t + 1], g[t], method, int(upsample), cv2)
                          for t in range(T - 1)])
        flows.append(fw)
        valids.append(fb_consistent(fw, bw, alpha, beta))
    flow = torch.stack(flows).to(dtype=x.dtype, device=x.device)
    valid = torch.stack(valids).to(dtype=x.dtype, device=x.device)
    return unbatched(flow, single), unbatched(valid, single)
