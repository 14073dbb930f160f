"""The guided-diffusion "ADM" UNet (Dhariwal & Nichol 2021), written so official weights load.

The module tree, and hence every ``state_dict`` key and shape, follows the published ADM layout,
so a checkpoint such as ``ffhq_10m.pt`` (DPS/DMPlug/BlindDPS) or ``256x256_diffusion_uncond.pt``
loads with ``strict=True``. The computation, with ``emb = MLP(sinusoid(t))``:

* ``time_embed``: Linear(C, 4C) -> SiLU -> Linear(4C, 4C) on the sinusoidal embedding
  ``[cos(t w_k), sin(t w_k)]``, ``w_k = 10000^(-k / (C/2))`` (the timestep ``t`` is the original
  0..T-1 index, not rescaled).
* ResBlock(x, emb): ``h = conv3(SiLU(GN(x)))`` (with ``resblock_updown`` the resampling is
  applied between SiLU and conv, and to the skip path); the embedding is projected by
  ``Linear(SiLU(emb))``. With ``use_scale_shift_norm`` it gives (scale, shift) and
  ``h = GN(h) (1 + scale) + shift``, else it is added before the norm. Then
  ``h = conv3(dropout(SiLU(h)))`` (zero-initialised), output ``skip(x) + h`` with ``skip`` the
  identity, or a 1x1 conv when the width changes.
* Attention: ``x + proj_out(attn(qkv(GN(x))))`` over the flattened H*W positions with 1x1
  ``Conv1d`` projections. The head count is ``C // num_head_channels`` when
  ``num_head_channels`` is set, else ``num_heads``. ``softmax(q^T k / sqrt(d))``; q, k, v are
  split from qkv per head ("legacy" order: the 3C channels are [q_1 k_1 v_1 q_2 k_2 v_2 ...]),
  or q, k, v first with ``use_new_attention_order``.
* Encoder: conv3 stem, then per level ``num_res_blocks`` ResBlocks (attention after each at the
  resolutions listed), and a downsampling step between levels (a ResBlock with ``down`` and
  2x2 average pooling, or a stride-2 conv ``op``). Middle: ResBlock, attention, ResBlock.
  Decoder: per level ``num_res_blocks + 1`` ResBlocks on [h, skip] concatenations, attention as
  above, and an upsampling step (ResBlock with ``up`` and nearest 2x, or nearest 2x + conv).
* ``out``: GN -> SiLU -> zero-initialised conv3 to C_in (2 C_in with ``learn_sigma``: eps and
  the learned-range interpolation value v).

GroupNorm uses 32 groups and is computed in float32 (as the reference does for fp16 runs).
``attention_resolutions`` are given in pixels (e.g. ``(16,)`` at image size 256, as in the
official config strings) and converted to downsampling factors ``image_size // r``, so the network
also runs at other sizes divisible by ``2^(levels - 1)`` with attention at the same depths.

Not supported: class-conditional checkpoints (``label_emb``; the priors used by the seed papers
are unconditional), gradient checkpointing and fp16 weights casting (load fp32 and call
``.half()`` yourself if wanted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffinv.diffusion.unet import timestep_embedding
from diffinv.errors import ShapeError

DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) evaluated in float32 and cast back to the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Resample(nn.Module):
    """Nearest 2x upsampling or 2x2 average pooling, without parameters (used in ResBlocks)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.mode == "down":
            return F.avg_pool2d(x, 2)
        return x


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv (``conv``) when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A stride-2 3x3 conv (``op``) when ``use_conv``, else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            if use_conv
            else nn.AvgPool2d(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding (see the module docstring)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        mode = "up" if up else "down" if down else "none"
        self.h_upd, self.x_upd = Resample(mode), Resample(mode)
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions with a residual connection."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        new_attention_order: bool = False,
    ):
        super().__init__()
        if num_head_channels == -1:
            heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"{channels} channels are not divisible by num_head_channels "
                    f"{num_head_channels}"
                )
            heads = channels // num_head_channels
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.num_heads = heads
        self.new_attention_order = new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))  # (B, 3C, L)
        n, d = self.num_heads, c // self.num_heads
        if self.new_attention_order:  # [q (all heads), k, v]
            q, k, v = qkv.reshape(b, 3, n, d, -1).unbind(1)
        else:  # per head [q_h, k_h, v_h]
            q, k, v = qkv.reshape(b, n, 3, d, -1).unbind(2)
        # (B, n, d, L) -> (B, n, L, d); softmax(q k^T / sqrt(d)) v
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        out = out.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The ADM UNet; ``forward(x, t)`` with x (B, C, H, W) and t (B,) original timesteps.

    Parameters follow the official option names: ``model_channels`` (``num_channels``),
    ``channel_mult`` (None: the official default for ``image_size``), ``attention_resolutions``
    in pixels, ``num_heads`` / ``num_head_channels`` (the latter wins when not -1),
    ``num_heads_upsample`` (-1: ``num_heads``), ``learn_sigma`` (2C outputs),
    ``use_scale_shift_norm``, ``resblock_updown``, ``conv_resample``,
    ``use_new_attention_order``.
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        model_channels: int = 128,
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        channel_mult: Sequence[float] | None = None,
        learn_sigma: bool = True,
        num_heads: int = 4,
        num_head_channels: int = 64,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if channel_mult is None:
            if image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"no default channel_mult for image_size {image_size}; give channel_mult "
                    f"(defaults exist for {sorted(DEFAULT_CHANNEL_MULT)})"
                )
            channel_mult = DEFAULT_CHANNEL_MULT[image_size]
        for r in attention_resolutions:
            if r <= 0 or image_size % r:
                raise ValueError(f"attention resolution {r} does not divide image_size {image_size}")
        self.config = dict(
            image_size=image_size,
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_resolutions=[int(r) for r in attention_resolutions],
            dropout=dropout,
            channel_mult=list(channel_mult),
            learn_sigma=learn_sigma,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_heads_upsample=num_heads_upsample,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            conv_resample=conv_resample,
            use_new_attention_order=use_new_attention_order,
        )
        self.in_channels = in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.model_channels = model_channels
        self.factor = 2 ** (len(channel_mult) - 1)
        attn_ds = {image_size // int(r) for r in attention_resolutions}
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        emb = 4 * model_channels

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

        def res(ch: int, out: int, **kw: bool) -> ResBlock:
            return ResBlock(ch, emb, dropout, out, use_scale_shift_norm, **kw)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb)
        )
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attn_ds:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skips.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch, ch), attention(ch, num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attn_ds:
                    layers.append(attention(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            _zeroed(nn.Conv2d(ch, self.out_channels, 3, padding=1)),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"ADM UNet expects (B, {self.in_channels}, H, W); got {tuple(x.shape)}"
            )
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ShapeError(
                f"ADM UNet needs H and W divisible by {self.factor}; got {tuple(x.shape[-2:])}"
            )
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise ShapeError(f"got {t.numel()} timesteps for a batch of {x.shape[0]}")
        dtype = next(self.parameters()).dtype
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dtype))
        h = x.to(dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


def _preset(adm: dict, domain: str, source: str) -> dict:
    return {
        "adm": adm,
        "schedule": "linear",
        "T": 1000,
        "variance": "learned_range",
        "image_shape": [adm.get("in_channels", 3), adm["image_size"], adm["image_size"]],
        "domain": domain,
        "source": source,
    }


_LARGE256 = dict(
    image_size=256,
    model_channels=256,
    num_res_blocks=2,
    attention_resolutions=[32, 16, 8],
    num_heads=4,
    num_head_channels=64,
    learn_sigma=True,
    use_scale_shift_norm=True,
    resblock_updown=True,
)

#: Named configurations of the official checkpoints used by the seed papers (methods.md 1.1):
#: linear schedule, T = 1000, eps output with learned-range variance.
ADM_PRESETS: dict[str, dict] = {
    "adm-ffhq256": _preset(
        dict(
            image_size=256,
            model_channels=128,
            num_res_blocks=1,
            attention_resolutions=[16],
            num_heads=4,
            num_head_channels=64,
            learn_sigma=True,
            use_scale_shift_norm=True,
            resblock_updown=True,
            dropout=0.0,
        ),
        "ffhq256",
        "ffhq_10m.pt (DPS / DMPlug / BlindDPS FFHQ prior)",
    ),
    "adm-imagenet256-uncond": _preset(
        dict(_LARGE256, dropout=0.0),
        "imagenet256",
        "256x256_diffusion_uncond.pt (guided-diffusion; imagenet256.pt in DPS)",
    ),
    "adm-lsun-bedroom256": _preset(
        dict(_LARGE256, dropout=0.1),
        "lsun-bedroom256",
        "lsun_bedroom.pt (guided-diffusion; DMPlug configs/model_config_bedroom.yaml)",
    ),
}
