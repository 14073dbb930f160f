"""Clips: the video contract of diffinv.

A clip is a float tensor ``(T, C, H, W)`` in [-1, 1]: ``T >= 2`` frames of one size (a single
frame is an image, not a clip). Where a solver needs a batch of clips it is ``(B, T, C, H, W)``.
Every video function accepts both and returns the rank it was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffinv.errors import NonFiniteError, ShapeError

#: the fewest frames a clip may have (a temporal relation needs two)
MIN_FRAMES = 2


def check_clip(x: Tensor, name: str = "x", *, min_frames: int = MIN_FRAMES,
               finite: bool = True) -> Tensor:
    """Check that ``x`` is a clip ``(T, C, H, W)`` or a batch of clips ``(B, T, C, H, W)``.

    Refuses (``ShapeError``) other ranks, empty dimensions and clips of fewer than ``min_frames``
    frames; (``NonFiniteError``) NaN/Inf; (``TypeError``) non-tensors and integer tensors.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor clip (T, C, H, W), got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ShapeError(f"{name} must be a clip (T, C, H, W) or a batch of clips (B, T, C, H, W);"
                         f" got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ShapeError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    n_frames = x.shape[-4]
    if n_frames < min_frames:
        raise ShapeError(f"{name} has {n_frames} frame(s); a clip needs at least {min_frames} "
                         "(a single frame is an image: use the image operators and metrics)")
    if finite and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise NonFiniteError(f"{name} contains {bad} NaN/Inf values")
    return x


def batched(x: Tensor) -> tuple[Tensor, bool]:
    """``(x as (B, T, ...), whether x was a single clip)``; pair with :func:`unbatched`."""
    return (x[None], True) if x.ndim == 4 else (x, False)


def unbatched(x: Tensor, single: bool) -> Tensor:
    return x[0] if single else x


def stack_frames(frames: Sequence[Tensor], name: str = "frames") -> Tensor:
    """Stack ``T`` frames ``(C, H, W)`` (or ``(1, C, H, W)``) into a clip ``(T, C, H, W)``.

    Frames of different sizes, channel counts, dtypes or devices are refused with the index of the
    first frame that differs from frame 0.
    """
    frames = list(frames)
    if len(frames) < MIN_FRAMES:
        raise ShapeError(f"{name}: a clip needs at least {MIN_FRAMES} frames, got {len(frames)}")
    out = []
    for i, f in enumerate(frames):
        if not isinstance(f, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(f).__name__}")
        if f.ndim == 4 and f.shape[0] == 1:
            f = f[0]
        if f.ndim != 3:
            raise ShapeError(f"{name}[{i}] must be a frame (C, H, W); got {tuple(f.shape)}")
        out.append(f)
    ref = out[0]
    for i, f in enumerate(out[1:], start=1):
        if f.shape != ref.shape:
            raise ShapeError(f"{name}[{i}] has shape {tuple(f.shape)} but {name}[0] has "
                             f"{tuple(ref.shape)}: the frames of a clip must share (C, H, W)")
        if f.dtype != ref.dtype or f.device != ref.device:
            raise ShapeError(f"{name}[{i}] is {f.dtype} on {f.device} but {name}[0] is "
                             f"{ref.dtype} on {ref.device}")
    return check_clip(torch.stack(out), name)


def check_flow(flow: Tensor, clip_shape: Sequence[int], name: str = "flow",
               channels: int = 2) -> Tensor:
    """Check a per-pair field of a clip of shape ``clip_shape``: ``(T - 1, channels, H, W)`` for a
    clip, ``(B, T - 1, channels, H, W)`` for a batch (flows: 2 channels; masks: 1)."""
    if not isinstance(flow, Tensor) or not flow.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor")
    shape = tuple(int(s) for s in clip_shape)
    want = (*shape[:-4], shape[-4] - 1, channels, *shape[-2:])
    if tuple(flow.shape) != want:
        raise ShapeError(f"{name} of shape {tuple(flow.shape)} does not fit a clip of shape "
                         f"{shape}: expected {want} (one field per consecutive frame pair)")
    if not torch.isfinite(flow).all():
        raise NonFiniteError(f"{name} contains NaN/Inf")
    return flow
