r"""A small residual UNet for supervised blind deblurring: ``\hat x = y + f_\theta(y)``.

Our stand-in for the supervised deblurring networks that blind-deblurring papers compare with
(DeblurGANv2, MPRNet, Stripformer): their weights are for 256x256 colour photographs and cannot be
had here, so we train a regression network of the same kind (an encoder-decoder with skip
connections that maps a blurred, noisy image to a sharp one) on our 32x32 domain
(:mod:`diffinv.learn.deblur_trainer`). It is **not** any of those architectures; it is a plain UNet
written for this purpose, with no timestep input (the diffusion UNet of
:mod:`diffinv.diffusion.unet` needs one and carries attention layers this task does not need).

Architecture: a 3x3 stem conv to ``base`` channels; per level ``blocks`` residual blocks
(GroupNorm -> SiLU -> 3x3 conv -> GroupNorm -> SiLU -> 3x3 conv, identity or 1x1 skip) and a
strided 3x3 conv down (``base * mults[l]`` channels at level ``l``); a middle of two blocks; on the
way up nearest-neighbour upsampling + 3x3 conv, concatenation with the encoder feature of the same
resolution, ``blocks`` residual blocks; a GroupNorm -> SiLU -> 3x3 conv head initialised to zero, so
the untrained network is the identity ``\hat x = y`` (global residual learning, as in MPRNet and
DeblurGANv2's FPN head, which also predict a correction added to the input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffinv.errors import ShapeError


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class DeblurUNet(nn.Module):
    """``forward(y) -> x_hat`` for ``y`` of shape ``(B, in_channels, image_size, image_size)``.

    The network is fully convolutional, but it was trained at one size and one channel count:
    :meth:`forward` refuses other shapes, naming both (the solver
    :mod:`diffinv.solvers.supervised_unet` relies on this).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, base: int = 32,
                 mults: Sequence[int] = (1, 2, 4), blocks: int = 1):
        super().__init__()
        self.config = dict(in_channels=int(in_channels), image_size=int(image_size),
                           base=int(base), mults=[int(m) for m in mults], blocks=int(blocks))
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        factor = 2 ** (len(mults) - 1)
        if image_size % factor:
            raise ShapeError(f"image_size {image_size} is not divisible by {factor}")
        self.stem = nn.Conv2d(in_channels, base, 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        ch, skips = base, []
        for level, m in enumerate(mults):
            stage = []
            for _ in range(blocks):
                stage.append(_Block(ch, base * m))
                ch = base * m
            self.enc.append(nn.Sequential(*stage))
            skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = nn.Sequential(_Block(ch, ch), _Block(ch, ch))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in reversed(range(len(mults) - 1)):
            cout = base * mults[level]
            self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                         nn.Conv2d(ch, cout, 3, padding=1)))
            stage = [_Block(cout + skips[level], cout)]
            stage += [_Block(cout, cout) for _ in range(blocks - 1)]
            self.dec.append(nn.Sequential(*stage))
            ch = cout
        self.head = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def check_input(self, y: torch.Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if y.ndim != 4 or tuple(y.shape[1:]) != want:
            raise ShapeError(f"this deblurring network was trained on images {want} (C, H, W); "
                             f"got a batch of shape {tuple(y.shape)}")

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self.check_input(y)
        h = self.stem(y)
        feats = []
        for level, stage in enumerate(self.enc):
            h = stage(h)
            feats.append(h)
            if level < len(self.down):
                h = self.down[level](h)
        h = self.mid(h)
        levels = reversed(range(len(self.enc) - 1))
        for level, up, stage in zip(levels, self.up, self.dec, strict=True):
            h = stage(torch.cat([up(h), feats[level]], dim=1))
        return y + self.head(h)
