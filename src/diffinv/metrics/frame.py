"""The metric frame: input checks and the map from the model range [-1, 1] to [0, 1].

Every metric in :mod:`diffinv.metrics` takes images as the rest of diffinv holds them, float tensors
(B, C, H, W) in [-1, 1], and evaluates them on the display frame

    u = clip((x + 1) / 2, 0, 1),

i.e. exactly the image a user would save: values a solver leaves outside [-1, 1] are clipped, as
writing an 8-bit PNG would (no quantisation is applied). Per-image metrics return a tensor of shape
(B,), one value per image, on the input's device.
"""

from __future__ import annotations

import torch

from diffinv.checks import check_image
from diffinv.errors import DiffinvError, ShapeError


class MetricArgumentError(DiffinvError, ValueError):
    """A metric option (data range, batch size, threshold, labels...) is invalid."""


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] images to the [0, 1] display frame: ``clip((x + 1) / 2, 0, 1)``."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def check_pair(x: torch.Tensor, ref: torch.Tensor, *, min_size: int | None = None) -> None:
    """Check that ``x`` and ``ref`` are finite (B, C, H, W) float tensors of the same shape.

    ``min_size`` is the smallest side a metric can work with (e.g. the 11-px SSIM window).
    """
    check_image(x, "x")
    check_image(ref, "ref")
    if x.shape[0] != ref.shape[0]:
        raise ShapeError(f"x has {x.shape[0]} images but ref has {ref.shape[0]}")
    if x.shape[1:] != ref.shape[1:]:
        raise ShapeError(
            f"x and ref must have the same (C, H, W); got {tuple(x.shape[1:])} "
            f"and {tuple(ref.shape[1:])}"
        )
    if x.shape[0] == 0:
        raise ShapeError("x and ref hold no images (batch size 0)")
    if min_size is not None and min(x.shape[-2:]) < min_size:
        raise ShapeError(
            f"images are {x.shape[-2]}x{x.shape[-1]}; this metric needs at least "
            f"{min_size}x{min_size}"
        )


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Gray (C = 1) images repeated to 3 channels; 3-channel images unchanged; others rejected."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ShapeError(f"expected 1 (gray) or 3 (RGB) channels; got {x.shape[1]}")
    return x


def as_device(device: torch.device | str) -> str:
    """Canonical string for a device (cache key for networks loaded per device)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return str(d)
