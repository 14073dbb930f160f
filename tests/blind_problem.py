"""A synthetic blind-deblurring problem for the blind diffusion solvers' tests.

Two 16x16 white-noise images ``x_j`` (uniform in [-0.8, 0.8], seeded: a flat spectrum, so a blur
is identifiable from ``y``) and, as the image prior, the exact eps network of ``N(x_j, s^2 I)``
with ``s = 0.05`` (one image), or of the equal-weight mixture of both (batch tests). With one image
the prior all but knows it, so what a recovery test checks is that the solver's *kernel*
machinery (kernel chain, Langevin updates, M-step) recovers the hidden kernel from
``y = k * x + n`` (circular blur, the benchmark boundary; sigma = 0.02, seed 2).
"""

from __future__ import annotations

import torch
from torch import nn

from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.physics import gaussian_kernel, make_operator, measure

N, S = 16, 0.05


class MixtureEps(nn.Module):
    """eps* of ``x0 ~ (1/J) sum_j N(mu_j, s^2 I)``: with ``v = abar s^2 + 1 - abar``,
    ``eps = sqrt(1 - abar) sum_j w_j(x) (x - sqrt(abar) mu_j) / v``, ``w = softmax_j(-||x -
    sqrt(abar) mu_j||^2 / 2v)``."""

    def __init__(self, mu: torch.Tensor, s: float, schedule: VPSchedule):
        super().__init__()
        self.register_buffer("mu", mu.double())
        self.s, self.abar = s, schedule.alpha_bar.clone().double()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.abar[t.cpu().long()].to(x.device).view(-1, 1, 1, 1, 1)
        v = ab * self.s ** 2 + 1 - ab
        d = x.double()[:, None] - ab.sqrt() * self.mu[None]          # (B, J, C, H, W)
        w = torch.softmax(-d.square().flatten(2).sum(2) / (2 * v.flatten(1)), dim=1)
        eps = (1 - ab[:, 0]).sqrt() * (w[:, :, None, None, None] * d).sum(1) / v[:, 0]
        return eps.to(x.dtype)


def oracle_prior(which: int | None = None) -> tuple[DiffusionPrior, torch.Tensor]:
    """(prior, images): both images and their mixture, or image ``which`` and its Gaussian."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, N, N, generator=g) * 2 - 1) * 0.8
    if which is not None:
        x = x[which:which + 1]
    schedule = VPSchedule.linear()
    prior = DiffusionPrior(MixtureEps(x, S, schedule), schedule, image_shape=(1, N, N))
    return prior, x


def blind_measurement(x: torch.Tensor, family: str = "blind-motion-blur", first: int = 0,
                      **op_kw):
    """``x`` measured as images ``first, first + 1, ...`` (their kernels and noise) of seed 2."""
    m = measure(x, make_operator(family, **op_kw), "gaussian:0.02", seed=2,
                indices=list(range(first, first + x.shape[0])))
    assert m.blind and m.params == {}  # the solver sees no truth
    return m


def true_kernel(m) -> torch.Tensor:
    if "std" in m.true_params:
        return gaussian_kernel(m.config["size"], m.true_params["std"])
    return m.true_params["kernel"]


def kernel_mse(k: torch.Tensor, m) -> torch.Tensor:
    return (k - true_kernel(m)).square().mean((1, 2))
