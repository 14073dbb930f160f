r"""A small KL autoencoder for 32x32 images (the first stage of a latent diffusion prior).

Architecture (a scaled-down LDM ``AutoencoderKL``, Rombach et al. 2022): encoder = stem conv,
per level ``blocks`` residual blocks (GroupNorm, SiLU, conv) and a stride-2 conv between levels,
a middle block, then GroupNorm-SiLU-conv to ``2 c`` channels (mean and log-variance of a diagonal
Gaussian posterior); the decoder mirrors it with nearest-neighbour upsampling. ``len(mults) - 1``
downsamplings: the default ``mults = (1, 2, 2)`` gives ``f = 4``, i.e. 32x32 -> 8x8 latents with
``latent_channels = 4`` (8x8x4 = 256 numbers for 1024 pixels).

Loss (LDM's, without LPIPS and GAN terms): ``rec + kl_weight * KL`` with ``rec`` the per-pixel L1
(default, LDM's pixel term) or MSE of the decoded *posterior sample* ``z = mu + exp(logvar / 2) n``
and ``KL = mean_b 0.5 sum(mu^2 + exp(logvar) - 1 - logvar)`` (LDM's default ``kl_weight`` 1e-6).
``encode`` returns the posterior mean ``mu``.

The latent scale (:func:`latent_scale`): ``1 / std`` of the encoded training latents, stored with
the export as ``scale_factor`` (Stable Diffusion's 0.18215 is this for its VAE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffinv.errors import ShapeError


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch) if ch % min(32, ch) == 0 else 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class KLAutoencoder(nn.Module):
    """``encode(x) -> mu``, ``posterior(x) -> (mu, logvar)``, ``decode(z) -> x``."""

    def __init__(self, in_channels: int = 1, image_size: int = 32, latent_channels: int = 4,
                 base_channels: int = 32, channel_mults: Sequence[int] = (1, 2, 2),
                 blocks: int = 1):
        super().__init__()
        mults = [int(m) for m in channel_mults]
        if not mults or any(m < 1 for m in mults) or blocks < 1 or latent_channels < 1:
            raise ValueError("channel_mults must be integers >= 1; blocks, latent_channels >= 1")
        f = 2 ** (len(mults) - 1)
        if image_size % f:
            raise ValueError(f"image_size {image_size} is not divisible by the factor {f}")
        self.config = dict(in_channels=in_channels, image_size=image_size,
                           latent_channels=latent_channels, base_channels=base_channels,
                           channel_mults=mults, blocks=blocks)
        self.image_shape = (in_channels, image_size, image_size)
        self.latent_shape = (latent_channels, image_size // f, image_size // f)
        chans = [base_channels * m for m in mults]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1)]
        ch = chans[0]
        for i, c in enumerate(chans):
            for _ in range(blocks):
                enc.append(ResBlock(ch, c))
                ch = c
            if i < len(chans) - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [ResBlock(ch, ch), _norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3,
                                                                  padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch, 3, padding=1), ResBlock(ch, ch)]
        for i, c in reversed(list(enumerate(chans))):
            for _ in range(blocks):
                dec.append(ResBlock(ch, c))
                ch = c
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(ch, ch, 3, padding=1)]
        dec += [_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            want = "x".join(str(s) for s in shape)
            raise ShapeError(f"the autoencoder takes a batch of {want} {what} (C x H x W), got "
                             f"{got}" + (f": resize or crop the images to {want}"
                                         if what == "images" else ""))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of the diagonal Gaussian posterior; logvar clamped to [-30, 20] (LDM)."""
        self._check(x, self.image_shape, "images")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        self._check(z, self.latent_shape, "latents")
        return self.decoder(z)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per image, summed over the latent."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def autoencoder_loss(model: KLAutoencoder, x: Tensor, noise: Tensor, *, kl_weight: float = 1e-6,
                     recon: str = "l1") -> tuple[Tensor, dict[str, float]]:
    """``rec(x, D(mu + sigma noise)) + kl_weight * KL`` (module docstring) and its parts."""
    mu, logvar = model.posterior(x)
    z = mu + (0.5 * logvar).exp() * noise
    xr = model.decode(z)
    rec = (xr - x).abs().mean() if recon == "l1" else (xr - x).pow(2).mean()
    kl = kl_divergence(mu, logvar).mean()
    loss = rec + kl_weight * kl
    return loss, {"rec": rec.item(), "kl": kl.item()}


@torch.no_grad()
def latent_scale(model: KLAutoencoder, data: Tensor, batch: int = 256) -> float:
    """``1 / std`` of the posterior means of ``data`` (all latent entries together)."""
    zs = [model.encode(data[i:i + batch]) for i in range(0, len(data), batch)]
    std = float(torch.cat(zs).float().std())
    return 1.0 / max(std, 1e-6)
