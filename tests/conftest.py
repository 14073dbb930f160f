"""Shared fixtures: exact Gaussian-data eps networks and tiny UNet configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffinv.diffusion.schedule import VPSchedule

torch.set_num_threads(1)


class GaussianEps(nn.Module):
    """The exact eps of data x0 ~ N(mu, Sigma) (flattened images of shape ``shape``).

    x_t ~ N(sqrt(ab) mu, C_t), C_t = ab Sigma + (1 - ab) I, so
    eps*(x_t, t) = -sqrt(1 - ab) grad log p_t(x_t) = sqrt(1 - ab) C_t^{-1} (x_t - sqrt(ab) mu).
    """

    def __init__(
        self, mu: torch.Tensor, sigma: torch.Tensor, shape: tuple[int, ...], schedule: VPSchedule
    ):
        super().__init__()
        self.register_buffer("mu", mu.double())
        self.register_buffer("sigma", sigma.double())
        self.shape = shape
        self.abar = schedule.alpha_bar.clone()
        self.dummy = nn.Parameter(torch.zeros(()))  # so .parameters() is non-empty

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        ab = self.abar[t.cpu().long()].to(x.device).double().view(b, 1, 1)
        d = self.mu.numel()
        eye = torch.eye(d, dtype=torch.float64, device=x.device)
        cov = ab * self.sigma + (1 - ab) * eye  # (B, d, d)
        r = x.reshape(b, d, 1).double() - ab.sqrt() * self.mu.view(1, d, 1)
        eps = (1 - ab).sqrt() * torch.linalg.solve(cov, r)
        return eps.reshape(b, *self.shape).to(x.dtype)


@pytest.fixture
def gaussian_problem():
    """A 2x2 single-channel 'image' distribution with a full covariance, and its eps network."""
    g = torch.Generator().manual_seed(0)
    d = 4
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    sigma = a @ a.T + 0.05 * torch.eye(d, dtype=torch.float64)
    mu = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    schedule = VPSchedule.linear()
    net = GaussianEps(mu, sigma, (1, 2, 2), schedule)
    return mu, sigma, schedule, net


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """An existing folder this process cannot create anything in (the command-line safety
    tests)."""
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").mkdir()
    except OSError:
        yield d
    else:  # root ignores permission bits: /proc refuses new entries to everyone
        (d / "probe").rmdir()
        if not Path("/proc/self").is_dir():
            pytest.skip("no folder here is unwritable for this user")
        yield Path("/proc")
    d.chmod(0o755)


TINY_UNET = dict(
    base_channels=16, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[8]
)


@pytest.fixture
def tiny_unet_config():
    return dict(TINY_UNET)


def make_tiny_prior(directory, name: str = "toy", size: int = 32, seed: int = 0):
    """Train a tiny UNet for 2 steps on seeded random data and export it as NAME.safetensors.

    The export's domain is ``name``, so ``name="mnist32"`` gives a prior whose reference split is
    MNIST's. Returns the weights path (its JSON config lies beside it).
    """
    from pathlib import Path

    from diffinv.learn.trainer import TrainConfig, export_prior, train_prior

    d = Path(directory)
    cfg = TrainConfig(out=str(d / "run"), steps=2, batch=4, ckpt_every=2, log_every=2, warmup=1,
                      unet=dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
                                attention_resolutions=[]))
    g = torch.Generator().manual_seed(seed)
    ckpt = train_prior(cfg, data=torch.rand(8, 1, size, size, generator=g) * 2 - 1, progress=False)
    return Path(export_prior(ckpt, d / "export", name))


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    """A tiny 32x32 single-channel prior (weights path), shared by the CLI and bench tests."""
    return make_tiny_prior(tmp_path_factory.mktemp("tiny-prior"))
