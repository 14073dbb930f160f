"""Noise models: moments of the samples, NLLs against torch.distributions, specs and conventions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, Poisson

from diffinv.errors import DiffinvError, ShapeError, UnknownNameError
from diffinv.physics import (
    ESWMV_LEVELS,
    GaussianNoise,
    ImpulseNoiseL1Surrogate,
    NoNoise,
    PoissonNoise,
    SpeckleNoise,
    eswmv_noise,
    list_noise_models,
    make_noise,
)
from diffinv.seeding import image_generators

N = 200_000  # values per moment check (one image of 200k pixels: fast)


def _ax(value: float) -> torch.Tensor:
    return torch.full((1, 1, 400, 500), value, dtype=torch.float64)


def _check_moment(est: float, expect: float, se: float, k: float = 5.0) -> None:
    assert abs(est - expect) < k * se, f"{est} vs {expect} (se {se})"


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_gaussian_moments(sigma):
    ax = _ax(0.2)
    r = (make_noise(f"gaussian:{sigma}").sample(ax, image_generators(0, [0])) - ax).flatten()
    _check_moment(r.mean().item(), 0.0, sigma / math.sqrt(N))
    _check_moment(r.var().item(), sigma ** 2, sigma ** 2 * math.sqrt(2 / (N - 1)))


@pytest.mark.parametrize("rate,value", [(25.0, 0.3), (5.0, -0.5), (200.0, 0.9)])
def test_poisson_moments_on_unit_intensities(rate, value):
    u = (value + 1) / 2
    y = make_noise(f"poisson:{rate}").sample(_ax(value), image_generators(1, [0]))
    y01 = ((y + 1) / 2).flatten()
    counts = y01 * rate
    assert torch.allclose(counts, counts.round(), atol=1e-9)  # integer photon counts
    mu = rate * u
    _check_moment(y01.mean().item(), u, math.sqrt(mu) / rate / math.sqrt(N))
    var_se = math.sqrt((mu * (1 + 3 * mu) - mu ** 2) / N) / rate ** 2  # (m4 - s^4) / N
    _check_moment(y01.var().item(), u / rate, var_se)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_impulse_fraction_and_values(p):
    ax = _ax(0.25)
    y = make_noise(f"impulse:{p}").sample(ax, image_generators(2, [0])).flatten()
    hit = y != 0.25
    assert set(y[hit].unique().tolist()) <= {-1.0, 1.0}
    _check_moment(hit.double().mean().item(), p, math.sqrt(p * (1 - p) / N))
    n_hit = int(hit.sum())
    _check_moment((y[hit] == 1).double().mean().item(), 0.5, 0.5 / math.sqrt(n_hit))


@pytest.mark.parametrize("c,value", [(0.2, 0.0), (0.45, 0.6)])
def test_speckle_moments(c, value):
    u = (value + 1) / 2
    y01 = ((make_noise(f"speckle:{c}").sample(_ax(value), image_generators(3, [0])) + 1) / 2)
    y01 = y01.flatten()
    sd = c * u
    _check_moment(y01.mean().item(), u, sd / math.sqrt(N))
    _check_moment(y01.var().item(), sd ** 2, sd ** 2 * math.sqrt(2 / (N - 1)))


def _pair(seed=0, shape=(3, 2, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    ax = torch.rand(shape, generator=g, dtype=torch.float64) * 1.8 - 0.9
    return ax, g


def test_gaussian_nll_is_the_normal_log_density():
    ax, g = _pair()
    nm = GaussianNoise(0.1)
    y = nm.sample(ax, image_generators(0, range(3)))
    ref = -Normal(ax, 0.1).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(nm.nll(y, ax), ref)


def test_poisson_nll_is_the_poisson_log_mass_of_the_counts():
    ax, g = _pair(1)
    nm = PoissonNoise(30.0)
    y = nm.sample(ax, image_generators(0, range(3)))
    counts = (30.0 * (y + 1) / 2).round()  # integers up to rounding
    ref = -Poisson(30.0 * (ax + 1) / 2).log_prob(counts).flatten(1).sum(1)
    torch.testing.assert_close(nm.nll(y, ax), ref)


def test_speckle_nll_is_the_gaussian_law_of_intensities():
    ax, g = _pair(2)
    nm = SpeckleNoise(0.3)
    y = nm.sample(ax, image_generators(0, range(3)))
    u = (ax + 1) / 2
    ref = -Normal(u, 0.3 * u).log_prob((y + 1) / 2).flatten(1).sum(1)
    torch.testing.assert_close(nm.nll(y, ax), ref)


def test_impulse_l1_surrogate_is_robust():
    ax, g = _pair(3)
    nm = ImpulseNoiseL1Surrogate(0.2)
    y = nm.sample(ax, image_generators(0, range(3)))
    n = ax[0].numel()
    ref = (y - ax).abs().flatten(1).sum(1) / 0.2 + n * math.log(0.4)
    torch.testing.assert_close(nm.nll(y, ax), ref)
    a = ax.clone().requires_grad_()
    (grad,) = torch.autograd.grad(nm.nll(y, a).sum(), a)
    assert grad.abs().max() <= 1 / 0.2 + 1e-12  # bounded influence of the outliers
    assert "L1 surrogate" in ImpulseNoiseL1Surrogate.__doc__


@pytest.mark.parametrize("spec", ["gaussian:0.05", "poisson:10", "speckle:0.2", "impulse:0.3"])
def test_nll_is_minimised_near_the_truth_and_differentiable(spec):
    ax, _ = _pair(4)
    nm = make_noise(spec)
    y = nm.sample(ax, image_generators(9, range(3)))
    a = ax.clone().requires_grad_()
    nll = nm.nll(y, a)
    assert nll.shape == (3,)
    (g,) = torch.autograd.grad(nll.sum(), a)
    assert torch.isfinite(g).all()
    shifted = nm.nll(y, (ax + 0.3).clamp(-1, 1))
    assert (nm.nll(y, ax) < shifted).all()


def test_no_noise_and_zero_sigma():
    ax, _ = _pair()
    for nm in (make_noise("none"), make_noise("gaussian:0")):
        y = nm.sample(ax, image_generators(0, range(3)))
        assert torch.equal(y, ax)
        torch.testing.assert_close(nm.nll(y + 1, ax), torch.full((3,), 0.5 * ax[0].numel(),
                                                                  dtype=ax.dtype))
    assert isinstance(make_noise("none"), NoNoise)


@pytest.mark.parametrize("spec", ["gaussian:0.1", "poisson:20", "impulse:0.3", "speckle:0.25"])
def test_noise_same_in_batch_and_alone(spec):
    ax, _ = _pair(5, shape=(4, 1, 8, 8))
    nm = make_noise(spec)
    y = nm.sample(ax, image_generators(11, [3, 4, 5, 6]))
    for i in range(4):
        assert torch.equal(nm.sample(ax[i:i + 1], image_generators(11, [3 + i])), y[i:i + 1])
    assert not torch.equal(nm.sample(ax, image_generators(12, [3, 4, 5, 6])), y)


def test_spec_round_trip_and_errors():
    for spec in ["gaussian:0.05", "poisson:25.0", "impulse:0.3", "speckle:0.2", "none"]:
        assert make_noise(make_noise(spec).spec()).spec() == make_noise(spec).spec()
    with pytest.raises(UnknownNameError) as e:
        make_noise("gauss:0.1")
    assert all(n in str(e.value) for n in ("gaussian", "poisson", "impulse", "speckle", "none"))
    for bad in ["gaussian:-0.1", "gaussian:nan", "poisson:0", "speckle:inf", "impulse:1.5",
                "gaussian", "gaussian:abc", "none:0.3"]:
        with pytest.raises(DiffinvError):
            make_noise(bad)
    with pytest.raises(ShapeError):
        make_noise("gaussian:0.1").nll(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    assert [n for n, _ in list_noise_models()] == ["none", "gaussian:SIGMA", "poisson:LAMBDA",
                                                   "impulse:P", "speckle:C"]


def test_eswmv_levels_are_converted_once():
    assert eswmv_noise("gaussian", "low") == "gaussian:0.24"  # 0.12 in [0,1] = 0.24 in [-1,1]
    assert eswmv_noise("gaussian", "high") == "gaussian:0.52"
    assert eswmv_noise("poisson", "medium") == "poisson:12.0"
    assert eswmv_noise("speckle", "high") == "speckle:0.45"
    assert eswmv_noise("impulse", "low") == "impulse:0.3"
    for kind, levels in ESWMV_LEVELS.items():
        for level in levels:
            make_noise(eswmv_noise(kind, level))
    with pytest.raises(UnknownNameError):
        eswmv_noise("gaussian", "extreme")
    # Gaussian noise of sigma_01 on [0,1] images is sigma = 2 sigma_01 in [-1,1] units
    ax = _ax(0.0)
    y = make_noise(eswmv_noise("gaussian", "low")).sample(ax, image_generators(0, [0]))
    _check_moment(((y - ax) / 2).std().item(), 0.12, 0.12 / math.sqrt(2 * N))
