"""True LPIPS (Zhang et al. 2018, v0.1, AlexNet) from weight files the user supplies.

The ImageNet AlexNet backbone that LPIPS needs cannot be installed offline (torchvision's model zoo
downloads it), and the ``lpips`` wheel ships only the linear heads. This module computes true
LPIPS when the user points to both files:

* ``backbone``: a torchvision AlexNet state_dict (e.g. ``alexnet-owt-7be5be79.pth``); its
  ``features.{i}.*`` tensors are loaded with ``strict=True`` into our own AlexNet feature stack,
  its ``classifier.*`` tensors (the ImageNet head, unused by LPIPS) are dropped;
* ``heads``: the ``lpips`` package's ``weights/v0.1/alex.pth`` (``lin{0..4}.model.1.weight``),
  loaded with ``strict=True``.

Both are read with ``weights_only=True``. They may also be given by the environment variables
``DIFFINV_LPIPS_ALEX_BACKBONE`` and ``DIFFINV_LPIPS_ALEX_HEADS``.

Backbone = torchvision AlexNet ``features`` cut after each ReLU:

    slice1: 0 conv 3->64 11x11 stride 4 pad 2 | 1 ReLU
    slice2: 2 max-pool 3x3 stride 2 | 3 conv 64->192 5x5 pad 2 | 4 ReLU
    slice3: 5 max-pool 3x3 stride 2 | 6 conv 192->384 3x3 pad 1 | 7 ReLU
    slice4: 8 conv 384->256 3x3 pad 1 | 9 ReLU
    slice5: 10 conv 256->256 3x3 pad 1 | 11 ReLU

Inputs follow the same convention as ST-LPIPS (upsampling to 128 by default, gray -> RGB).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn

from diffinv.errors import IntegrityError, MissingAssetError
from diffinv.metrics.frame import as_device, check_pair
from diffinv.metrics.perceptual import (
    PerceptualDistance,
    SlicedBackbone,
    batched_distance,
    load_strict,
    torch_load_weights,
)
from diffinv.metrics.stlpips import UPSAMPLE_TO

CHANNELS = (64, 192, 384, 256, 256)
BACKBONE_ENV = "DIFFINV_LPIPS_ALEX_BACKBONE"
HEADS_ENV = "DIFFINV_LPIPS_ALEX_HEADS"
MIN_SIZE = 31  # AlexNet's stride-4 conv and two stride-2 pools need at least 31 px
# torchvision feature index -> slice number (1-based)
_SLICE_OF = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


def alexnet_features() -> SlicedBackbone:
    """AlexNet's convolutional stack cut into the five LPIPS slices (random weights)."""
    return SlicedBackbone([
        [(0, nn.Conv2d(3, 64, 11, stride=4, padding=2)), (1, nn.ReLU())],
        [(2, nn.MaxPool2d(3, stride=2)), (3, nn.Conv2d(64, 192, 5, padding=2)), (4, nn.ReLU())],
        [(5, nn.MaxPool2d(3, stride=2)), (6, nn.Conv2d(192, 384, 3, padding=1)), (7, nn.ReLU())],
        [(8, nn.Conv2d(384, 256, 3, padding=1)), (9, nn.ReLU())],
        [(10, nn.Conv2d(256, 256, 3, padding=1)), (11, nn.ReLU())],
    ])


def build_lpips_alex() -> PerceptualDistance:
    """LPIPS-Alex with random weights (use :func:`load_lpips_alex` for real ones)."""
    return PerceptualDistance(alexnet_features(), CHANNELS)


def backbone_state_from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision AlexNet state_dict's ``features.{i}.p`` to ``slice{k}.{i}.p``.

    ``classifier.*`` entries are dropped; any other key is kept unchanged so that the strict load
    reports it as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        if key.startswith("classifier."):
            continue
        parts = key.split(".")
        if parts[0] == "features" and len(parts) >= 3 and parts[1].isdigit():
            i = int(parts[1])
            if i in _SLICE_OF:
                out[f"slice{_SLICE_OF[i]}.{i}.{'.'.join(parts[2:])}"] = val
                continue
        out[key] = val
    return out


def _resolve(path: str | os.PathLike | None, env: str, what: str) -> Path:
    if path is None:
        path = os.environ.get(env)
    if not path:
        raise MissingAssetError(
            f"true LPIPS needs the {what}; it cannot be installed offline. Pass its path or set "
            f"{env}=/path/to/file (see diffinv.metrics.lpips)"
        )
    p = Path(path)
    if not p.is_file():
        raise MissingAssetError(f"{what} not found at {p}")
    return p


def load_lpips_alex(backbone: str | os.PathLike | None = None,
                    heads: str | os.PathLike | None = None,
                    device: torch.device | str = "cpu") -> PerceptualDistance:
    """True LPIPS-Alex from a torchvision AlexNet state_dict and the lpips v0.1 heads file."""
    b = _resolve(backbone, BACKBONE_ENV, "AlexNet backbone file (torchvision state_dict)")
    h = _resolve(heads, HEADS_ENV, "LPIPS linear heads file (lpips weights/v0.1/alex.pth)")
    return _load_cached(str(b.resolve()), str(h.resolve()), as_device(device))


@lru_cache(maxsize=4)
def _load_cached(backbone: str, heads: str, device: str) -> PerceptualDistance:
    net = build_lpips_alex()
    bstate = backbone_state_from_torchvision(torch_load_weights(backbone, "AlexNet backbone"))
    load_strict(net.net, bstate, f"AlexNet backbone {backbone}")
    hstate = torch_load_weights(heads, "LPIPS heads")
    heads_module = nn.Module()
    for k in range(len(CHANNELS)):
        heads_module.add_module(f"lin{k}", getattr(net, f"lin{k}"))
    load_strict(heads_module, hstate, f"LPIPS heads {heads}")
    if not all((getattr(net, f"lin{k}").model[1].weight >= 0).all() for k in range(len(CHANNELS))):
        raise IntegrityError(f"{heads} has negative LPIPS head weights: not an LPIPS heads file")
    return net.to(device)


def lpips_alex(x: torch.Tensor, ref: torch.Tensor, *, backbone: str | os.PathLike | None = None,
               heads: str | os.PathLike | None = None, upsample_to: int | None = UPSAMPLE_TO,
               batch_size: int = 64) -> torch.Tensor:
    """Per-image true LPIPS-Alex distance of ``x`` to ``ref``; shape (B,).

    Same input convention as :func:`diffinv.metrics.stlpips.st_lpips`. Raises
    MissingAssetError when the backbone or heads file is not given (argument or environment).
    """
    check_pair(x, ref)
    net = load_lpips_alex(backbone, heads, x.device)
    return batched_distance(net, x, ref, upsample_to, batch_size, MIN_SIZE)
