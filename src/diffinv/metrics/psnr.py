"""Peak signal-to-noise ratio, per image, on the [0, 1] frame.

For an image u and its reference v (both mapped to [0, 1], see :mod:`diffinv.metrics.frame`)
with N = C * H * W values,

    MSE(u, v)  = (1 / N) * sum_i (u_i - v_i)^2
    PSNR(u, v) = 10 * log10(R^2 / MSE(u, v))       [dB]

where R is the data range (1 on the [0, 1] frame). Identical images give +inf. This is
``skimage.metrics.peak_signal_noise_ratio(v, u, data_range=R)`` applied image by image.
"""

from __future__ import annotations

import torch

from diffinv.metrics.frame import MetricArgumentError, check_pair, to_unit


def _mse64(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    d = to_unit(x).to(dtype) - to_unit(ref).to(dtype)
    return d.square().flatten(1).mean(dim=1)


def mse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error on the [0, 1] frame; shape (B,)."""
    check_pair(x, ref)
    return _mse64(x, ref).to(x.dtype)


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of ``x`` against ``ref`` (both (B, C, H, W) in [-1, 1]); shape (B,).

    ``data_range`` is R in ``10 log10(R^2 / MSE)``; the images are compared on the [0, 1] frame,
    so the default R = 1 is the full range. Identical images give ``inf``.
    """
    if not data_range > 0:
        raise MetricArgumentError(f"data_range must be positive; got {data_range}")
    check_pair(x, ref)
    return (10.0 * torch.log10(data_range**2 / _mse64(x, ref))).to(x.dtype)
