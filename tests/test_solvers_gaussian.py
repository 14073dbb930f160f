"""Gaussian data x0 ~ N(mu, Sigma) (exact eps network) + linear Gaussian measurement: the exact
posterior is known in closed form; the solvers' sample means (and variances, where the theory
says they match) are compared with it, with tolerances from standard errors plus stated bounds on
each method's approximation error."""

from __future__ import annotations

import pytest
import torch

from conftest import GaussianEps
from diffinv.diffusion import DiffusionPrior
from diffinv.physics import make_operator, measure
from diffinv.solvers import make_solver

N = 1000  # samples per run (one batch)


def _problem(gaussian_problem, iso: float | None = None, sigma_y: float = 0.1):
    mu, sigma, schedule, net = gaussian_problem
    if iso is not None:
        sigma = iso * torch.eye(4, dtype=torch.float64)
        net = GaussianEps(mu, sigma, (1, 2, 2), schedule)
    prior = DiffusionPrior(net, schedule, image_shape=(1, 2, 2), clip_denoised=False)
    x = torch.tensor([[[[0.5, -0.4], [0.2, 0.1]]]])
    op = make_operator("inpaint-random", p=0.5)
    m = measure(x, op, f"gaussian:{sigma_y}", seed=1)
    A = torch.stack([op(torch.eye(4)[i].reshape(1, 1, 2, 2), **m.params).flatten()
                     for i in range(4)], 1).double()
    y = m.y.flatten().double()
    cov = torch.linalg.inv(torch.linalg.inv(sigma) + A.T @ A / sigma_y ** 2)
    mean = cov @ (torch.linalg.solve(sigma, mu) + A.T @ y / sigma_y ** 2)
    obs = m.params["mask"].flatten().bool()
    pub = m.public()
    pub.params = {"mask": m.params["mask"].expand(N, 1, 2, 2)}
    return prior, m.y.expand(N, 1, 2, 2).contiguous(), pub, mean, cov, mu, obs


def _run(name, prior, y, pub, **params):
    x = make_solver(name, **params)(y, pub, prior, seed=0).x.flatten(1).double()
    return x.mean(0), x.std(0), x.std(0) / N ** 0.5


def test_posterior_is_informative(gaussian_problem):
    """Sanity of the set-up: the posterior mean is far (many SE) from the prior mean."""
    _, _, _, mean, cov, mu, obs = _problem(gaussian_problem)
    assert (mean - mu)[obs].abs().min() > 0.15
    assert cov.diag()[obs].max() < 0.02


def test_admm_pnp_converges_to_posterior_mean(gaussian_problem):
    """For a Gaussian prior the Tweedie denoiser is the prox of -log p, so PnP-ADMM with a
    constant penalty is ADMM on the MAP problem: its fixed point is the posterior mean."""
    prior, y, pub, mean, _, _, _ = _problem(gaussian_problem)
    m = make_solver("admm-pnp", iters=100, sigma_max=0.3, sigma_min=0.3)(
        y[:1], _one(pub), prior).x.flatten().double()
    assert torch.allclose(m, mean, atol=2e-4), (m, mean)
    # the default annealed schedule ends near the same point
    m2 = make_solver("admm-pnp")(y[:1], _one(pub), prior).x.flatten().double()
    assert torch.allclose(m2, mean, atol=2e-2), (m2, mean)


def _one(pub):
    import copy

    p = copy.copy(pub)
    p.params = {"mask": pub.params["mask"][:1]}
    return p


def test_pigdm_exact_when_its_gaussian_approximation_is(gaussian_problem):
    """Isotropic prior N(mu, c I): p(x0 | x_t) = N(x0_hat, r_t^2 I) exactly with PiGDM's r_t^2
    (data_var = c), so PiGDM with eta = 1 targets the exact posterior: mean within 4 SE and
    standard deviations within 10% (1000 steps; the DDIM discretisation error is a few %)."""
    prior, y, pub, mean, cov, _, _ = _problem(gaussian_problem, iso=0.25)
    m, sd, se = _run("pigdm", prior, y, pub, data_var=0.25, steps=1000, weighting="score")
    assert ((m - mean).abs() <= 4 * se).all(), ((m - mean) / se)
    assert ((sd / cov.diag().sqrt() - 1).abs() < 0.10).all(), (sd, cov.diag().sqrt())


def _bound(m, se, mean, mu, obs, frac_all, frac_obs):
    """Mean error <= frac * (distance from prior mean to posterior mean) + 4 SE, on all
    coordinates (norm) and per observed coordinate."""
    dist = (mu - mean).norm()
    assert (m - mean).norm() <= frac_all * dist + 4 * se.norm(), ((m - mean), dist)
    d_obs = (mu - mean)[obs].abs()
    assert ((m - mean)[obs].abs() <= frac_obs * d_obs + 4 * se[obs]).all(), (m - mean, d_obs)


def test_pigdm_default_mean_bounded(gaussian_problem):
    """Correlated prior: PiGDM's isotropic r_t^2 (data_var = 1) is an approximation; its mean
    error is bounded by 40% of the prior-to-posterior distance, 10% on observed pixels."""
    prior, y, pub, mean, _, mu, obs = _problem(gaussian_problem)
    m, _, se = _run("pigdm", prior, y, pub, weighting="score")
    _bound(m, se, mean, mu, obs, 0.40, 0.10)


def test_ddrm_mean_bounded(gaussian_problem):
    """DDRM (20 steps, eta 0.85, eta_b 1) is not exact for a correlated prior: mean error <= 40%
    of the prior-to-posterior distance overall, 15% on observed pixels."""
    prior, y, pub, mean, _, mu, obs = _problem(gaussian_problem)
    m, _, se = _run("ddrm", prior, y, pub)
    _bound(m, se, mean, mu, obs, 0.40, 0.15)


def test_dmps_mean_bounded(gaussian_problem):
    """DMPS's uninformative-prior likelihood is an approximation: error <= 50% / 15% (obs)."""
    prior, y, pub, mean, _, mu, obs = _problem(gaussian_problem)
    m, _, se = _run("dmps", prior, y, pub, steps=250)
    _bound(m, se, mean, mu, obs, 0.50, 0.15)


def test_dps_mean_bounded(gaussian_problem):
    """DPS's p(y | x0_hat) approximation pins the observed pixels (error <= 10% of the distance)
    but propagates the information to correlated, unobserved pixels poorly: overall error is only
    bounded by the prior-to-posterior distance itself (it is no worse than the prior mean)."""
    prior, y, pub, mean, _, mu, obs = _problem(gaussian_problem)
    m, _, se = _run("dps", prior, y, pub, steps=250)
    _bound(m, se, mean, mu, obs, 1.0, 0.10)


@pytest.mark.parametrize("name", ["dps", "dmps"])
def test_isotropic_prior_means(gaussian_problem, name):
    """With an isotropic prior there are no correlations to propagate: DPS and DMPS land on the
    posterior mean within 10% of the prior-to-posterior distance on every pixel."""
    prior, y, pub, mean, _, mu, obs = _problem(gaussian_problem, iso=0.25)
    m, _, se = _run(name, prior, y, pub, steps=250)
    assert ((m - mean).abs() <= 0.10 * (mu - mean).abs() + 4 * se).all(), (m, mean)
