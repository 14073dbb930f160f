"""DiffusionPrior steps against their closed forms, and sampling an exactly known Gaussian."""

import math

import pytest
import torch

from diffinv.diffusion.prior import DiffusionPrior
from diffinv.errors import DiffinvError, ShapeError
from diffinv.seeding import image_generators


def make_prior(net, schedule, **kw):
    return DiffusionPrior(net, schedule, image_shape=(1, 2, 2), clip_denoised=False, **kw)


def test_tweedie_is_posterior_mean_for_gaussian_data(gaussian_problem):
    """For Gaussian data E[x0|x_t] = mu + ab^{1/2} Sigma C_t^{-1} (x_t - ab^{1/2} mu)."""
    mu, sigma, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    for t in (0, 200, 700):
        ab = schedule.alpha_bar[t]
        cov = ab * sigma + (1 - ab) * torch.eye(4, dtype=torch.float64)
        r = x.reshape(3, 4, 1) - ab.sqrt() * mu.view(1, 4, 1)
        expect = mu.view(1, 4, 1) + ab.sqrt() * sigma @ torch.linalg.solve(cov, r)
        got = prior.x0(x, t).reshape(3, 4, 1)
        assert torch.allclose(got, expect, atol=1e-10)
        # score = -eps / sqrt(1 - ab) = -C_t^{-1}(x_t - sqrt(ab) mu)
        score = prior.score(x, t).reshape(3, 4, 1)
        assert torch.allclose(score, -torch.linalg.solve(cov, r), atol=1e-10)


def test_ddpm_step_matches_posterior_of_one_step(gaussian_problem):
    mu, sigma, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    z = torch.randn_like(x)
    t = 400
    x0 = prior.x0(x, t)
    s = schedule
    mean = s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * x
    out, x0_ret = prior.ddpm_step(x, t, z)
    assert torch.allclose(out, mean + s.posterior_variance[t].sqrt() * z, atol=1e-10)
    assert torch.allclose(x0_ret, x0)
    last, _ = prior.ddpm_step(x, 0, None)  # no noise at t = 0
    assert torch.allclose(
        last, s.posterior_mean_coef1[0] * prior.x0(x, 0) + s.posterior_mean_coef2[0] * x
    )


def test_variance_types():
    from torch import nn

    from diffinv.diffusion.schedule import VPSchedule

    s = VPSchedule.linear()

    class TwoC(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return torch.cat([torch.zeros_like(x), torch.full_like(x, self.v)], 1)

    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    t = 300
    hi = DiffusionPrior(TwoC(1.0), s, image_shape=(1, 2, 2), variance="learned_range")
    lo = DiffusionPrior(TwoC(-1.0), s, image_shape=(1, 2, 2), variance="learned_range")
    _, v_hi = hi.net_out(x, t)
    _, v_lo = lo.net_out(x, t)
    assert torch.allclose(
        hi.posterior_log_variance(x, t, v_hi), s.betas[t].log().float().double(), rtol=1e-6
    )
    assert torch.allclose(
        lo.posterior_log_variance(x, t, v_lo),
        s.posterior_variance[t].log().float().double(),
        rtol=1e-6,
    )
    mid = DiffusionPrior(TwoC(0.0), s, image_shape=(1, 2, 2), variance="learned_range")
    _, v0 = mid.net_out(x, t)
    expect = 0.5 * (s.betas[t].log() + s.posterior_variance[t].log())
    assert torch.allclose(mid.posterior_log_variance(x, t, v0), expect.float().double(), rtol=1e-6)

    class OneC(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return x

    with pytest.raises(DiffinvError, match="2C"):
        DiffusionPrior(OneC(), s, image_shape=(1, 2, 2), variance="learned_range").net_out(
            torch.zeros(1, 1, 2, 2), 5
        )


def test_ddim_update_closed_form_and_eta_one_gives_ddpm_variance(gaussian_problem):
    mu, sigma, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    t, tp = 500, 499
    x0 = prior.x0(x, t)
    ab, abp = schedule.alpha_bar[t], schedule.alpha_bar[tp]
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    det, _ = prior.ddim_step(x, t, tp, eta=0.0)
    assert torch.allclose(det, abp.sqrt() * x0 + (1 - abp).sqrt() * eps, atol=1e-6)
    # eta = 1 on consecutive steps: sigma^2 equals the DDPM posterior variance beta~_t, and the
    # mean equals the DDPM posterior mean (Song et al. 2021, sec. 4.1).
    z = torch.randn_like(x)
    sto, _ = prior.ddim_step(x, t, tp, eta=1.0, noise=z)
    ddpm, _ = prior.ddpm_step(x, t, z)
    assert torch.allclose(sto, ddpm, atol=1e-5)
    final, x0_last = prior.ddim_step(x, 3, -1)
    assert torch.allclose(final, x0_last, atol=1e-6)


def _moments_ok(
    samples: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, z: float = 4.5, bias: float = 0.0
) -> None:
    """Sample mean/covariance within z standard errors (+ a stated discretisation bias)."""
    n = samples.shape[0]
    x = samples.reshape(n, -1).double()
    m = x.mean(0)
    se_m = (sigma.diagonal() / n).sqrt()
    assert torch.all((m - mu).abs() <= z * se_m + bias), (m, mu, se_m)
    c = torch.cov(x.T)
    # Var of a sample covariance entry for Gaussian data: (S_ii S_jj + S_ij^2) / n.
    se_c = ((sigma.diagonal()[:, None] * sigma.diagonal()[None, :] + sigma**2) / n).sqrt()
    assert torch.all((c - sigma).abs() <= z * se_c + bias), (c, sigma, se_c)


@pytest.mark.parametrize(
    "method,steps,bias", [("ddpm", 1000, 0.0), ("ddim", 1000, 0.0), ("ddim", 100, 0.0)]
)
def test_sampling_gaussian_reproduces_mean_and_covariance(gaussian_problem, method, steps, bias):
    mu, sigma, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    n = 4000
    x = prior.sample(n, seed=11, method=method, steps=steps)
    _moments_ok(x, mu, sigma, bias=bias)


def test_moment_check_catches_a_slightly_wrong_prior(gaussian_problem):
    """The tolerances are tight enough to reject a prior whose covariance is 15% off."""
    from conftest import GaussianEps

    mu, sigma, schedule, _ = gaussian_problem
    prior = make_prior(GaussianEps(mu, 1.15 * sigma, (1, 2, 2), schedule), schedule)
    x = prior.sample(4000, seed=11, method="ddpm", steps=1000)
    with pytest.raises(AssertionError):
        _moments_ok(x, mu, sigma)


def test_sampling_is_reproducible_and_batch_independent(gaussian_problem):
    mu, sigma, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    a = prior.sample(4, seed=5, method="ddpm", steps=20)
    b = prior.sample(4, seed=5, method="ddpm", steps=20)
    assert torch.equal(a, b)
    singles = torch.cat(
        [prior.sample(1, seed=image_generators(5, [i]), method="ddpm", steps=20) for i in range(4)]
    )
    assert torch.allclose(a, singles, atol=1e-6)
    c = prior.sample(4, seed=6, method="ddpm", steps=20)
    assert not torch.allclose(a, c)


def test_bad_inputs(gaussian_problem):
    mu, sigma, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    with pytest.raises(DiffinvError, match="timesteps"):
        prior.eps(torch.zeros(1, 1, 2, 2), 1000)
    with pytest.raises(DiffinvError, match="noise"):
        prior.ddpm_step(torch.zeros(1, 1, 2, 2), 5, None)
    with pytest.raises(ShapeError):
        prior.check_input(torch.zeros(1, 3, 2, 2))
    with pytest.raises(DiffinvError, match="sampling method"):
        prior.sample(1, method="euler")
    from diffinv.errors import NonFiniteError

    bad = torch.zeros(1, 1, 2, 2)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        prior.x0(bad, 10)
    assert math.isfinite(prior.nfe)
