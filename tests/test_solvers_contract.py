"""The common solver contract: batching, seeds, refusals, divergence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffinv.diffusion import DiffusionPrior
from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers._common import SolverDivergedError

FAST = {
    "dps": {"steps": 25}, "dps-nll": {"steps": 25, "scale": 1e-3}, "mcg": {"steps": 25},
    "ilvr": {"steps": 25}, "dmps": {"steps": 25}, "pigdm": {"steps": 10}, "ddrm": {},
    "admm-pnp": {"iters": 10}, "diffpir": {"steps": 20}, "red-diff": {"steps": 50},
    "daps": {"annealing_steps": 8, "mcmc_steps": 10},
}


def _prior(gaussian_problem, shape=(1, 2, 2)):
    mu, sigma, schedule, net = gaussian_problem
    return DiffusionPrior(net, schedule, image_shape=shape)


def _measurement(name):
    x = torch.tensor([[[[0.5, -0.4], [0.2, 0.1]]], [[[0.1, 0.3], [-0.6, 0.2]]],
                      [[[0.0, 0.0], [0.4, -0.2]]], [[[-0.3, 0.7], [0.1, 0.1]]]])
    if name == "ilvr":
        return measure(x, make_operator("sr-avgpool", factor=2), "gaussian:0.05", seed=2)
    noise = "poisson:30" if name == "dps-nll" else "gaussian:0.05"
    return measure(x, make_operator("inpaint-random", p=0.5), noise, seed=2)


def _slice(m, i):
    import copy

    p = copy.copy(m.public())
    p.params = {k: v[i:i + 1] for k, v in m.params.items()}
    return m.y[i:i + 1], p


@pytest.mark.parametrize("name", sorted(FAST))
def test_batch_equals_one_by_one_and_seed_reproduces(gaussian_problem, name):
    prior = _prior(gaussian_problem)
    m = _measurement(name)
    solver = make_solver(name, **FAST[name])
    full = solver(m.y, m.public(), prior, seed=image_generators(7, range(4)))
    again = solver(m.y, m.public(), prior, seed=image_generators(7, range(4)))
    assert torch.equal(full.x, again.x)  # bit for bit
    for i in range(4):
        y, p = _slice(m, i)
        one = solver(y, p, prior, seed=image_generators(7, [i]))
        assert torch.allclose(one.x, full.x[i:i + 1], atol=1e-5), i
    assert torch.isfinite(full.x).all() and full.nfe > 0 and full.seconds > 0


def test_nfe_counts(gaussian_problem):
    prior = _prior(gaussian_problem)
    m = _measurement("dps")
    r = make_solver("dps", steps=30)(m.y, m.public(), prior)
    assert r.nfe == 30 and r.trace["backward_nfe"] == 30
    assert make_solver("ddrm", steps=7)(m.y, m.public(), prior).nfe == 7
    assert make_solver("pigdm", steps=12)(m.y, m.public(), prior).nfe == 12
    assert make_solver("diffpir", steps=9)(m.y, m.public(), prior).nfe == 9
    assert make_solver("red-diff", steps=20)(m.y, m.public(), prior).nfe == 20
    assert make_solver("daps", annealing_steps=4, ode_steps=3, mcmc_steps=2)(
        m.y, m.public(), prior).nfe == 12


def test_different_seeds_differ(gaussian_problem):
    prior = _prior(gaussian_problem)
    m = _measurement("dps")
    a = make_solver("dps", steps=10)(m.y, m.public(), prior, seed=0).x
    b = make_solver("dps", steps=10)(m.y, m.public(), prior, seed=1).x
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", ["ddrm", "pigdm", "dmps", "mcg", "admm-pnp", "ilvr"])
def test_refuses_operator_without_svd(gaussian_problem, name):
    x = torch.zeros(1, 1, 4, 4)
    m = measure(x, make_operator("sr-bicubic", factor=2), "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="needs an SVD"):
        make_solver(name)(m.y, m.public(), _prior(gaussian_problem, (1, 4, 4)))


def test_refuses_nonlinear_and_non_sr_and_non_gaussian(gaussian_problem):
    prior = _prior(gaussian_problem)
    x = torch.zeros(1, 1, 2, 2)
    m = measure(x, make_operator("inpaint-random", p=0.5), "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="downsampling"):
        make_solver("ilvr")(m.y, m.public(), prior)
    m = measure(x, make_operator("inpaint-random", p=0.5), "poisson:10", seed=0)
    with pytest.raises(DiffinvError, match="Gaussian noise"):
        make_solver("ddrm")(m.y, m.public(), prior)
    m = measure(torch.zeros(1, 1, 32, 32), make_operator("nonlinear-blur"), "gaussian:0.05",
                seed=0)
    with pytest.raises(DiffinvError, match="needs a linear operator"):
        make_solver("pigdm")(m.y, m.public(), _prior(gaussian_problem, (1, 32, 32)))


def test_refuses_blind_and_other_domain(gaussian_problem):
    prior = _prior(gaussian_problem)
    m = measure(torch.zeros(1, 1, 8, 8), make_operator("blind-gaussian-blur", size=3),
                "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="blind"):
        make_solver("dps")(m.y, m.public(), _prior(gaussian_problem, (1, 8, 8)))
    m = measure(torch.zeros(1, 1, 4, 4), make_operator("inpaint-random"), "gaussian:0.05", seed=0)
    with pytest.raises(ShapeError, match="another domain"):
        make_solver("dps")(m.y, m.public(), prior)


def test_unknown_solver_lists_known():
    with pytest.raises(DiffinvError, match="known: .*ddrm.*dps"):
        make_solver("dsp")
    with pytest.raises(DiffinvError, match="no parameter .nonsense.; its parameters: eta, sampler"):
        make_solver("dps", nonsense=1)


class _NaNAfter(nn.Module):
    """Wraps an eps network and returns NaN once the timestep drops below ``t_bad``."""

    def __init__(self, net, t_bad):
        super().__init__()
        self.net, self.t_bad = net, t_bad

    def forward(self, x, t):
        out = self.net(x, t)
        return out * float("nan") if int(t[0]) < self.t_bad else out


class _NaNAfterCalls(nn.Module):
    """Wraps an eps network and returns NaN from its ``n + 1``-th call on."""

    def __init__(self, net, n):
        super().__init__()
        self.net, self.n, self.calls = net, n, 0

    def forward(self, x, t):
        self.calls += 1
        out = self.net(x, t)
        return out * float("nan") if self.calls > self.n else out


@pytest.mark.parametrize("name", ["dps", "ddrm", "pigdm", "admm-pnp", "diffpir", "red-diff",
                                  "daps"])
def test_nan_mid_run_stops_and_keeps_last_finite(gaussian_problem, name):
    mu, sigma, schedule, net = gaussian_problem
    t_bad = 30 if name == "admm-pnp" else 400
    # DAPS's every level runs its ODE down to sigma 0.01: NaN after its first two levels instead
    bad = _NaNAfterCalls(net, 12) if name == "daps" else _NaNAfter(net, t_bad)
    prior = DiffusionPrior(bad, schedule, image_shape=(1, 2, 2))
    m = _measurement("dps")
    with pytest.raises(SolverDivergedError) as info:
        make_solver(name, **FAST[name])(m.y, m.public(), prior)
    err = info.value
    assert isinstance(err, NonFiniteError)
    assert err.step > 0 and torch.isfinite(err.last_finite).all()
    assert err.last_finite.shape == m.y.shape
    assert "NaN" in str(err) and f"step {err.step}" in str(err)
