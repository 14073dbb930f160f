"""DAPS: its annealing levels are the official grid, its ODE converges to the exact probability-flow
map of a Gaussian prior at first order, its Langevin kernel samples the closed-form Gaussian
x0 | x_t, y of a linear problem, and a run fits the data and leaves unobserved pixels to the
prior."""

from __future__ import annotations

import pytest
import torch

from conftest import GaussianEps
from diffinv.diffusion import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import DiffinvError
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers._common import SolverDivergedError
from diffinv.solvers.daps import VEDenoiser, annealing_levels, langevin_x0, ode_x0
from test_solvers_gaussian import _problem

MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
S2 = 0.25


def _iso_prior():
    sched = VPSchedule.linear()
    net = GaussianEps(MU, S2 * torch.eye(4, dtype=torch.float64), (1, 2, 2), sched)
    return DiffusionPrior(net, sched, image_shape=(1, 2, 2), clip_denoised=False)


def test_annealing_levels_are_the_official_poly7_grid():
    lv = annealing_levels(200)
    assert len(lv) == 201 and lv[0] == pytest.approx(100.0) and lv[-1] == 0.0
    assert all(a > b for a, b in zip(lv[:-1], lv[1:], strict=True))
    # the first 200 of 201 points from 100 to 0.1: the last level used is above sigma_min
    r = 199 / 200
    want = (100 ** (1 / 7) + r * (0.1 ** (1 / 7) - 100 ** (1 / 7))) ** 7
    assert lv[-2] == pytest.approx(want) and lv[-2] > 0.1


@pytest.mark.parametrize("sigma", [50.0, 2.0, 0.3])
def test_ode_converges_to_the_gaussian_flow_at_first_order(sigma):
    """Prior N(m, s^2 I): the probability-flow map from sigma to sigma_end is
    x -> m + sqrt((s^2 + sigma_end^2) / (s^2 + sigma^2)) (x - m). Euler's error shrinks ~1/n
    (the nearest-timestep rounding of D adds a floor far below the tolerances)."""
    d = VEDenoiser(_iso_prior())
    g = torch.Generator().manual_seed(1)
    m = MU.float().reshape(1, 1, 2, 2)
    x = m + sigma * torch.randn(16, 1, 2, 2, generator=g)
    want = m + ((S2 + 0.01 ** 2) / (S2 + sigma ** 2)) ** 0.5 * (x - m)
    err = [float((ode_x0(d, x, sigma, n) - want).abs().max()) for n in (25, 400)]
    assert err[1] < 0.012, err
    assert err[0] / err[1] > 8, err  # 16x more steps: ~16x less error at first order


def test_langevin_samples_the_closed_form_gaussian():
    """Inpainting (A = mask), x0_hat fixed: the chain's target has precision
    P = 2 A^T A / tau^2 + I / sigma^2 and mean P^-1 (2 A^T y / tau^2 + x0_hat / sigma^2) (the
    official loss has no 1/2). K chains after 6 relaxation times: mean within 4 SE, variance ratio
    within 4 SE (sqrt(2 / K)) + 1% (ULA's O(lr) bias is ~0.6% here)."""
    K, tau, sigma, lr = 2000, 0.5, 0.5, 1e-3
    op = make_operator("inpaint-random", p=0.5)
    x = torch.tensor([[[[0.5, -0.4], [0.2, 0.1]]]])
    m = measure(x, op, "gaussian:0.05", seed=1)
    mask = m.params["mask"]
    y = m.y.expand(K, 1, 2, 2)
    x0_hat = torch.full((K, 1, 2, 2), -0.3)
    out = langevin_x0(x0_hat, y, lambda v: op(v, mask=mask.expand(K, 1, 2, 2)), sigma, tau, lr,
                      1500, image_generators(0, range(K))).double().flatten(1)
    a = mask.flatten().double()
    prec = 2 * a / tau ** 2 + 1 / sigma ** 2
    mean = (2 * a * m.y.flatten().double() / tau ** 2 - 0.3 / sigma ** 2) / prec
    se = out.std(0) / K ** 0.5
    assert ((out.mean(0) - mean).abs() <= 4 * se).all(), ((out.mean(0) - mean) / se)
    assert ((out.var(0) * prec - 1).abs() < 4 * (2 / K) ** 0.5 + 0.01).all(), out.var(0) * prec


def test_run_fits_the_data_and_leaves_unobserved_pixels_to_the_prior(gaussian_problem):
    """Half the pixels observed, prior N(mu, 0.25 I). With tau = 0.01 the likelihood pins the
    observed pixels to y (mean within 4 SE + 1e-3); the unobserved ones keep the prior's mean
    (within 4 SE + 0.03: the Gaussian approximation of x0 | x_t with variance sigma^2 is not
    exact) and most of its spread (sd within 25%)."""
    prior, y, pub, mean, cov, mu, obs = _problem(gaussian_problem, iso=0.25)
    n = 300
    y, pub.params = y[:n], {"mask": pub.params["mask"][:n]}
    x = make_solver("daps", annealing_steps=40, mcmc_steps=40)(y, pub, prior, seed=0).x
    x = x.flatten(1).double()
    se = x.std(0) / n ** 0.5
    yv = y[0].flatten().double()
    assert ((x.mean(0) - yv)[obs].abs() <= 4 * se[obs] + 1e-3).all(), x.mean(0)
    hidden = ~obs
    assert ((x.mean(0) - mu)[hidden].abs() <= 4 * se[hidden] + 0.03).all(), x.mean(0)
    assert ((x.std(0)[hidden] / 0.5 - 1).abs() < 0.25).all(), x.std(0)


def test_a_diverging_chain_stops_with_a_clear_error(gaussian_problem):
    prior, y, pub, *_ = _problem(gaussian_problem, iso=0.25)
    y, pub.params = y[:2], {"mask": pub.params["mask"][:2]}
    with pytest.raises(SolverDivergedError, match="daps"):
        make_solver("daps", annealing_steps=5, mcmc_steps=50, lr=1e-2)(y, pub, prior)


def test_bad_settings_are_refused():
    with pytest.raises(DiffinvError, match="ode_steps"):
        make_solver("daps", ode_steps=0)
    with pytest.raises(DiffinvError, match="sigma_max"):
        make_solver("daps", sigma_max=0.05)
    with pytest.raises(DiffinvError, match="exceeds the prior"):
        make_solver("daps", sigma_max=1e4, annealing_steps=2)(
            *_one_measurement(), _iso_prior())


def test_budgets_set_levels_and_ode_steps_and_count_their_product_in_nfe():
    assert (make_solver("daps").annealing_steps, make_solver("daps").ode_steps) == (200, 5)
    four = make_solver("daps", budget="4k")
    assert (four.annealing_steps, four.ode_steps) == (400, 10)
    mixed = make_solver("daps", budget="4K", annealing_steps=3, mcmc_steps=1)
    assert (mixed.annealing_steps, mixed.ode_steps) == (3, 10)
    prior = _iso_prior()
    prior.reset_nfe()
    mixed(*_one_measurement(), prior, seed=0)
    assert prior.nfe == 3 * 10
    with pytest.raises(DiffinvError, match="unknown DAPS budget '2k'.*'1k', '4k'"):
        make_solver("daps", budget="2k")


def _one_measurement():
    op = make_operator("inpaint-random", p=0.5)
    m = measure(torch.zeros(1, 1, 2, 2), op, "gaussian:0.05", seed=0)
    return m.y, m.public()
