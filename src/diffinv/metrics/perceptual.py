"""Building blocks shared by the learned perceptual distances (ST-LPIPS and true LPIPS).

Both are the LPIPS construction of Zhang et al. (CVPR 2018): a frozen backbone gives feature maps
f_l(a) in R^{C_l x H_l x W_l} at L = 5 depths; each map is unit-normalised along channels,

    n_l(a) = f_l(a) / (||f_l(a)||_2 + 1e-10)        (norm over C_l at every pixel),

and the distance of two images is a learned, channel-weighted, spatially averaged squared difference

    d(a, b) = sum_l (1 / (H_l W_l)) sum_{h,w} sum_c w_{l,c} (n_l(a) - n_l(b))_{c,h,w}^2 ,

where w_l >= 0 are the weights of a 1x1 convolution without bias (the "linear heads"). Images
enter the backbone in [-1, 1] after the fixed LPIPS v0.1 scaling (a - shift) / scale with
shift = (-0.030, -0.088, -0.188) and scale = (0.458, 0.448, 0.450) per RGB channel.

The networks here are our own code; their parameter names follow the published state_dict files
(``lin{l}.model.1.weight``, ``net.slice{k}.{i}.*``) so those files load with ``strict=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffinv.errors import IntegrityError, ShapeError
from diffinv.metrics.frame import MetricArgumentError, to_rgb, to_unit

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class ScalingLayer(nn.Module):
    """Fixed per-channel affine map (a - shift) / scale of LPIPS v0.1 (buffers, loadable)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.shift) / self.scale


class LinearHead(nn.Module):
    """1x1 convolution C -> 1 without bias: the per-channel weights w_l of one depth.

    The published heads were trained with a dropout layer in front (index 0 of ``model``); it does
    nothing at evaluation, so index 0 is an identity here and the weight keeps its key
    ``model.1.weight``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return self.model(d)


class BlurPool(nn.Module):
    """Anti-aliased stride-2 down-sampling (Zhang 2019), as used by the shift-tolerant backbones.

    Reflection-pads by ``filt_size - 1`` on every side (the "pad more" variant of Ghildyal & Liu
    2022), then convolves each channel with the normalised binomial kernel b b^T / sum, with
    b = (1, 2, 1) for ``filt_size`` = 3, at stride 2. The kernel is a buffer named ``filt`` of shape
    (C, 1, k, k), as in the published weight files.
    """

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        if filt_size < 1:
            raise MetricArgumentError("filt_size must be >= 1")
        taps = torch.tensor([float(_binom(filt_size - 1, j)) for j in range(filt_size)])
        k2 = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (k2 / k2.sum())[None, None].repeat(channels, 1, 1, 1))
        self.pad = filt_size - 1
        self.stride = stride

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p = self.pad
        h = F.pad(h, (p, p, p, p), mode="reflect")
        return F.conv2d(h, self.filt, stride=self.stride, groups=h.shape[1])


def _binom(n: int, k: int) -> int:
    out = 1
    for j in range(1, k + 1):
        out = out * (n - j + 1) // j
    return out


class SlicedBackbone(nn.Module):
    """A feed-forward stack cut into 5 slices; the output of each slice is one feature map f_l.

    ``slices`` lists, per slice, its layers as (index, module) pairs; the indices name the
    sub-modules (``slice{k}.{index}``) so that published state_dicts load unchanged.
    """

    def __init__(self, slices: Sequence[Sequence[tuple[int, nn.Module]]]) -> None:
        super().__init__()
        self.n_slices = len(slices)
        for k, layers in enumerate(slices, start=1):
            seq = nn.Sequential(OrderedDict((str(i), m) for i, m in layers))
            self.add_module(f"slice{k}", seq)

    def forward(self, a: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = a
        for k in range(1, self.n_slices + 1):
            h = getattr(self, f"slice{k}")(h)
            feats.append(h)
        return feats


def unit_normalize(f: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """f / (||f||_2 over channels + eps), at every pixel."""
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualDistance(nn.Module):
    """d(a, b) of the module docstring for a backbone ``net`` with channel counts ``channels``.

    ``forward(a, b)`` takes (B, 3, H, W) images in [-1, 1] and returns the (B,) distances.
    The module is frozen and always in evaluation mode; it stays differentiable in its inputs.
    """

    def __init__(self, net: SlicedBackbone, channels: Sequence[int]) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = net
        self.n_layers = len(channels)
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", LinearHead(c))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Stays in evaluation mode: this is a fixed metric, not a trainable network."""
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net(self.scaling_layer(a))
        fb = self.net(self.scaling_layer(b))
        total = a.new_zeros(a.shape[0])
        for k in range(self.n_layers):
            diff = (unit_normalize(fa[k]) - unit_normalize(fb[k])).square()
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, failing with an IntegrityError that names
    the missing / unexpected keys or mismatched shapes."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise IntegrityError(f"{what} does not fit the network: {e}") from e


def torch_load_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a plain state_dict with ``weights_only=True`` on the CPU."""
    from diffinv.fileio import load_tensors_only

    state = load_tensors_only(Path(path))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IntegrityError(f"{path} is not a state_dict of tensors ({what})")
    return dict(state)


def prepare_pair(x: torch.Tensor, ref: torch.Tensor, upsample_to: int | None,
                 min_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map to the [0, 1] frame, gray -> RGB, bilinearly upsample, and return both in [-1, 1].

    If ``upsample_to`` is set and the shorter side is below it, both images are resized by
    bilinear interpolation (``align_corners=False``, no antialiasing) so that the shorter side
    becomes ``upsample_to`` (32x32 -> 128x128 with the default 128).
    """
    out = []
    for z in (x, ref):
        u = to_rgb(to_unit(z))
        h, w = u.shape[-2:]
        if upsample_to is not None and min(h, w) < upsample_to:
            s = upsample_to / min(h, w)
            size = (round(h * s), round(w * s))
            u = F.interpolate(u, size=size, mode="bilinear", align_corners=False)
        out.append(u * 2.0 - 1.0)
    if min(out[0].shape[-2:]) < min_size:
        raise ShapeError(
            f"images are {out[0].shape[-2]}x{out[0].shape[-1]} after resizing; the network needs "
            f"at least {min_size}x{min_size} (raise upsample_to)"
        )
    return out[0], out[1]


def batched_distance(net: PerceptualDistance, x: torch.Tensor, ref: torch.Tensor,
                     upsample_to: int | None, batch_size: int, min_size: int) -> torch.Tensor:
    """Run ``net`` on :func:`prepare_pair` outputs, ``batch_size`` pairs at a time, no gradients."""
    if batch_size < 1:
        raise MetricArgumentError(f"batch_size must be >= 1; got {batch_size}")
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            a, b = prepare_pair(x[i:i + batch_size].float(), ref[i:i + batch_size].float(),
                                upsample_to, min_size)
            out.append(net(a, b))
    return torch.cat(out).to(x.dtype)
