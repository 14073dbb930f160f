r"""The PatchGAN term of DAVI's official code (``cm/losses_perceptual.py``), an option (off by default).

* Discriminator (pix2pix "NLayer" PatchGAN, Isola et al. 2017): conv 4x4/2 + LeakyReLU(0.2), then
  ``n_layers - 1`` blocks conv 4x4/2 + BatchNorm + LeakyReLU with doubling width (capped at 8
  ``ndf``), one conv 4x4/1 block, and a 4x4/1 conv to one logit per patch. Official: 3 layers,
  ``ndf = 64``, SyncBatchNorm (here BatchNorm2d; it becomes SyncBatchNorm under torchrun).
* Discriminator loss (hinge, VQGAN): ``L_D = 0.5 (mean relu(1 - D(x0)) + mean relu(1 + D(x_hat)))``.
* Generator loss: ``L_G = -mean D(x_hat) + sum_l mean |f_l(x_hat) - f_l(x0)|`` (feature matching on
  the discriminator's intermediate activations, real features detached).
* Adaptive weight (VQGAN, Esser et al. 2021, eq. 7): ``lambda = clip(||grad_last L_gt|| /
  (||grad_last L_G|| + 1e-4), 0.01, 10)``, gradients taken at the generator's last layer, detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """NLayer PatchGAN returning its logits and the intermediate features."""

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, 1),
                                                 nn.LeakyReLU(0.2))]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            blocks.append(nn.Sequential(nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                                        nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(ndf * mult, 1, 4, 1, 1)
        for m in self.modules():  # the pix2pix initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return self.head(x), feats


def discriminator_loss(disc: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Hinge loss ``0.5 (mean relu(1 - D(real)) + mean relu(1 + D(fake)))``."""
    lr, _ = disc(real)
    lf, _ = disc(fake.detach())
    return 0.5 * (F.relu(1 - lr).mean() + F.relu(1 + lf).mean())


def generator_gan_loss(disc: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """``-mean D(fake) + sum_l mean |f_l(fake) - f_l(real)|``."""
    lf, ff = disc(fake)
    with torch.no_grad():
        _, fr = disc(real)
    return -lf.mean() + sum((a - b).abs().mean() for a, b in zip(ff, fr, strict=True))


def last_layer(net: nn.Module) -> Tensor:
    """The weight of the network's last convolution (its output layer)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].weight


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, layer: Tensor) -> Tensor:
    """``clip(||d rec/d layer|| / (||d gan/d layer|| + 1e-4), 0.01, 10)``, detached."""
    g_rec = torch.autograd.grad(rec_loss, layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.01, 10.0).detach()
