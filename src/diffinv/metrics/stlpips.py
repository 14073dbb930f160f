"""ST-LPIPS: the shift-tolerant AlexNet perceptual distance of Ghildyal & Liu (ECCV 2022).

A port of the "alex, shift_tolerant" variant of ``stlpips-pytorch==0.0.2`` (the paper's
"antialiased, blur-pool with reflection pad 2, conv1 stride 1, blur after" AlexNet) written on
torch alone. The construction is the LPIPS one of :mod:`diffinv.metrics.perceptual`; only the
backbone differs from AlexNet: every stride is moved into an anti-aliasing blur-pool (stride-2
binomial blur after reflection padding by 2), so that a one-pixel shift barely changes the features.

Backbone (slice outputs are the five feature maps; indices are the weight file's):

    slice1: 0 conv 3->64 11x11 pad 2 | 1 blur-pool | 2 ReLU
    slice2: 3 max-pool 3x3 stride 1 | 4 blur-pool | 5 conv 64->192 5x5 pad 2 | 6 ReLU
    slice3: 7 max-pool 3x3 stride 1 | 8 blur-pool | 9 conv 192->384 3x3 pad 1 | 10 ReLU
    slice4: 11 conv 384->256 3x3 pad 1 | 12 ReLU
    slice5: 13 conv 256->256 3x3 pad 1 | 14 ReLU

Weights: ``diffinv.assets.locate("stlpips-alex")`` (the package's
``weights/vST0.0/alex_shift_tolerant.pth``: backbone, blur-pool buffers, scaling constants and
linear heads), loaded with ``weights_only=True`` and ``strict=True``.

Convention for the 32x32 domain (DESIGN.md): images are bilinearly upsampled to 128x128 before
the network (``upsample_to=128``; the deepest AlexNet maps would be 4x4 at 32x32). Pass
``upsample_to=None`` to feed images at their own size. Gray images are repeated to 3 channels.
This is ST-LPIPS, not LPIPS: values are not comparable with LPIPS figures in papers.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn

from diffinv import assets
from diffinv.metrics.frame import as_device, check_pair
from diffinv.metrics.perceptual import (
    BlurPool,
    PerceptualDistance,
    SlicedBackbone,
    batched_distance,
    load_strict,
    torch_load_weights,
)

CHANNELS = (64, 192, 384, 256, 256)
UPSAMPLE_TO = 128
MIN_SIZE = 21  # smallest side for which every blur-pool reflection pad fits its input


def shift_tolerant_alexnet(filt_size: int = 3) -> SlicedBackbone:
    """The shift-tolerant AlexNet backbone (random weights; see the module docstring)."""
    return SlicedBackbone([
        [(0, nn.Conv2d(3, 64, 11, stride=1, padding=2)), (1, BlurPool(64, filt_size)),
         (2, nn.ReLU())],
        [(3, nn.MaxPool2d(3, stride=1)), (4, BlurPool(64, filt_size)),
         (5, nn.Conv2d(64, 192, 5, padding=2)), (6, nn.ReLU())],
        [(7, nn.MaxPool2d(3, stride=1)), (8, BlurPool(192, filt_size)),
         (9, nn.Conv2d(192, 384, 3, padding=1)), (10, nn.ReLU())],
        [(11, nn.Conv2d(384, 256, 3, padding=1)), (12, nn.ReLU())],
        [(13, nn.Conv2d(256, 256, 3, padding=1)), (14, nn.ReLU())],
    ])


def build_stlpips() -> PerceptualDistance:
    """ST-LPIPS network with random weights (use :func:`load_stlpips` for the real one)."""
    return PerceptualDistance(shift_tolerant_alexnet(), CHANNELS)


def load_stlpips(device: torch.device | str = "cpu", path: str | None = None) -> PerceptualDistance:
    """The ST-LPIPS network with the published weights, frozen, in eval mode, on ``device``.

    ``path`` defaults to the pinned asset ``stlpips-alex`` (SHA-256 checked before loading).
    Cached per (device, path).
    """
    return _load_cached(as_device(device), path)


@lru_cache(maxsize=8)
def _load_cached(device: str, path: str | None) -> PerceptualDistance:
    p = assets.locate("stlpips-alex") if path is None else path
    net = build_stlpips()
    load_strict(net, torch_load_weights(p, "ST-LPIPS weights"), f"ST-LPIPS weights {p}")
    return net.to(device)


def st_lpips(x: torch.Tensor, ref: torch.Tensor, *, upsample_to: int | None = UPSAMPLE_TO,
             batch_size: int = 64) -> torch.Tensor:
    """Per-image ST-LPIPS distance (lower is closer) of ``x`` to ``ref``; shape (B,).

    ``x``, ``ref``: (B, C, H, W) in [-1, 1], C = 1 or 3; evaluated on the clipped [0, 1] frame
    rescaled to [-1, 1]. ``upsample_to``: bilinear upsampling of the shorter side to this size
    first (default 128, the 32x32-domain convention), None to disable. Runs on ``x.device``
    without gradients, ``batch_size`` pairs at a time.
    """
    check_pair(x, ref)
    net = load_stlpips(x.device)
    return batched_distance(net, x, ref, upsample_to, batch_size, MIN_SIZE)
