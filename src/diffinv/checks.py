"""Input validation shared by every public entry point."""

from __future__ import annotations

import torch

from diffinv.errors import NonFiniteError, ShapeError


def check_image(
    x: torch.Tensor,
    name: str = "x",
    *,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a (B, C, H, W) float tensor, optionally of given channels/size, finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ShapeError(f"{name} must have shape (B, C, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(f"{name} has {x.shape[1]} channels; expected {channels}")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != hw:
            raise ShapeError(f"{name} is {x.shape[-2]}x{x.shape[-1]}; expected {hw[0]}x{hw[1]}")
    if finite and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise NonFiniteError(f"{name} contains {bad} NaN/Inf values")
    return x
