"""A compact epsilon-prediction UNet for small images.

Architecture (in the spirit of Ho et al. 2020 / Nichol & Dhariwal 2021, written from scratch):
sinusoidal timestep embedding -> MLP; per resolution level ``num_res_blocks`` residual blocks
(GroupNorm -> SiLU -> 3x3 conv, timestep added as a per-channel bias, GroupNorm -> SiLU ->
dropout -> 3x3 conv, zero-initialised) with multi-head self-attention at the resolutions listed in
``attention_resolutions``; strided-conv downsampling, nearest+conv upsampling, skip connections
concatenated on the way up; zero-initialised output conv. With ``learn_sigma`` the output has
2C channels: eps and the interpolation value v of the learned-range variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffinv.errors import DiffinvError, ShapeError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding: [cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2, self.drop = _norm(cout), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def feature_resolutions(image_size: int, channel_mults: Sequence[int]) -> list[int]:
    """The feature-map sizes of a UNet: ``image_size / 2**level`` for each level."""
    return [image_size // 2 ** level for level in range(len(channel_mults))]


def check_attention(image_size: int, channel_mults: Sequence[int],
                    attention_resolutions: Sequence[int]) -> None:
    """Refuse an attention resolution the network has no feature map of (it would be ignored)."""
    sizes = feature_resolutions(image_size, channel_mults)
    for r in attention_resolutions:
        if r not in sizes:
            raise DiffinvError(
                f"attention resolution {r} is not a feature-map size of this UNet; with "
                f"{image_size}x{image_size} images and {len(channel_mults)} levels they are "
                f"{', '.join(map(str, sizes))}")


def _check_count(value: object, name: str, least: int) -> None:
    """A UNet size: an integer >= ``least`` (a ValueError otherwise, like the other settings)."""
    import operator

    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        v = None
    if isinstance(value, bool) or v is None or v < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


class UNet(nn.Module):
    """eps-prediction UNet; ``forward(x, t)`` with x (B, C, H, W) and t (B,) original timesteps."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8,),
        num_heads: int = 4,
        dropout: float = 0.0,
        learn_sigma: bool = False,
    ):
        super().__init__()
        for name, value, least in (("in_channels", in_channels, 1), ("image_size", image_size, 1),
                                   ("base_channels", base_channels, 1),
                                   ("num_res_blocks", num_res_blocks, 0),
                                   ("num_heads", num_heads, 1)):
            _check_count(value, name, least)
        for mult in channel_mults:
            _check_count(mult, "every entry of channel_mults", 1)
        self.config = dict(
            in_channels=in_channels,
            image_size=image_size,
            base_channels=base_channels,
            channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions),
            num_heads=num_heads,
            dropout=dropout,
            learn_sigma=learn_sigma,
        )
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.image_size = image_size
        self.factor = 2 ** (len(channel_mults) - 1)
        if image_size % self.factor:
            raise ValueError(f"image_size {image_size} is not divisible by {self.factor}")
        temb = 4 * base_channels
        self.base_channels = base_channels
        self.temb_mlp = nn.Sequential(
            nn.Linear(base_channels, temb), nn.SiLU(), nn.Linear(temb, temb)
        )
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch, res = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(ch, base_channels * mult, temb, dropout)])
                ch = base_channels * mult
                if res in attention_resolutions:
                    blocks.append(SelfAttention(ch, num_heads))
                self.down.append(blocks)
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, temb, dropout),
                SelfAttention(ch, num_heads),
                ResBlock(ch, ch, temb, dropout),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                blocks = nn.ModuleList(
                    [ResBlock(ch + skips.pop(), base_channels * mult, temb, dropout)]
                )
                ch = base_channels * mult
                if res in attention_resolutions:
                    blocks.append(SelfAttention(ch, num_heads))
                if level > 0 and i == num_res_blocks:
                    blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    blocks.append(nn.Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(blocks)
        self.head = nn.Sequential(
            _norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        )

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for m in blocks:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"UNet expects (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ShapeError(
                f"UNet needs H and W divisible by {self.factor}; got {tuple(x.shape[-2:])}"
            )
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        temb = self.temb_mlp(timestep_embedding(t, self.base_channels))
        h = self.stem(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, temb)
            hs.append(h)
        h = self._run(self.mid, h, temb)
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, hs.pop()], dim=1), temb)
        return self.head(h)
