"""Blind DMPlug: the kernel / angle / zoom are recovered jointly with the image.

Blind deconvolution is only identifiable when the prior constrains the image. The prior here is
the exact eps network of a *low-rank* Gaussian on 12x12 images (rank 6 plus a 1e-6 jitter), so
R(z) stays close to a 6-dimensional subspace; with the operator's unknowns (25 kernel weights or
one scalar) the 144 measured pixels determine both. The true images are drawn from the prior and
measured with sigma = 0.01 noise. Stated errors (3 images each, 400 Adam iterations, z lr 0.1,
kernel/parameter lr 0.1, seeds fixed): kernel L1 error sum|k_hat - k| < 0.15 (a random softmax
start is > 0.5 away; observed <= 0.08), angle within 0.5 deg (observed <= 0.11), zoom within 0.01
(observed <= 0.003).
"""

from __future__ import annotations

import pytest
import torch

from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics import gaussian_kernel, make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver

N, RANK = 12, 6


@pytest.fixture(scope="module")
def lowrank():
    from conftest import GaussianEps

    d = N * N
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(d, RANK, generator=g, dtype=torch.float64))[0]
    sigma = (0.25 * N) ** 2 * U @ U.T + 1e-6 * torch.eye(d, dtype=torch.float64)
    schedule = VPSchedule.linear()
    net = GaussianEps(torch.zeros(d, dtype=torch.float64), sigma, (1, N, N), schedule)
    prior = DiffusionPrior(net, schedule, image_shape=(1, N, N))
    x = prior.sample(3, seed=1, method="ddim", steps=50)
    return prior, x


def solve(prior, x, name, iterations=400, **op_kw):
    m = measure(x, make_operator(name, **op_kw), "gaussian:0.01", seed=2)
    assert m.blind and m.params == {}  # the solver sees no truth
    r = make_solver("dmplug", iterations=iterations, lr=0.1)(m.y, m.public(), prior, seed=0)
    return m, r


def true_kernel(m):
    if "std" in m.true_params:
        return gaussian_kernel(5, m.true_params["std"])
    return m.true_params["kernel"]


@pytest.mark.parametrize("name", ["blind-gaussian-blur", "blind-motion-blur"])
def test_recovers_the_kernel(lowrank, name):
    prior, x = lowrank
    m, r = solve(prior, x, name, size=5)
    k = r.trace["kernel"]
    assert k.shape == (3, 5, 5)
    assert (k >= 0).all() and torch.allclose(k.sum((1, 2)), torch.ones(3), atol=1e-5)
    err = (k - true_kernel(m)).abs().sum((1, 2))
    assert (err < 0.15).all(), err
    # the random start was far: the first iterate's kernel is the softmax of N(0, I) logits
    start = torch.softmax(torch.stack([torch.randn(25, generator=g) for g in
                                       _after_z(image_generators(0, range(3)))]), 1)
    assert ((start.reshape(3, 5, 5) - true_kernel(m)).abs().sum((1, 2)) > 0.5).all()
    assert (r.x - x).abs().amax((1, 2, 3)).max() < 0.1


def _after_z(gens):
    for g in gens:  # the solver draws z (one image) first, then the kernel logits
        torch.randn((1, N, N), generator=g)
    return gens


def test_recovers_the_rotation_angle(lowrank):
    prior, x = lowrank
    m, r = solve(prior, x, "blind-rotation-blur")
    err = (r.trace["theta"] - m.true_params["theta"]).abs()
    assert (err < 0.5).all(), err
    assert ((r.trace["theta"] > 5) & (r.trace["theta"] < 25)).all()


def test_recovers_the_zoom_factor(lowrank):
    prior, x = lowrank
    m, r = solve(prior, x, "blind-zoom-blur")
    err = (r.trace["z"] - m.true_params["z"]).abs()
    assert (err < 0.01).all(), err


@pytest.mark.parametrize("name, key", [("blind-motion-blur", "kernel"),
                                       ("blind-rotation-blur", "theta")])
@pytest.mark.parametrize("early_stop", ["none", "wmv"])
def test_blind_batch_equals_one_by_one(lowrank, name, key, early_stop):
    """Also with ES-WMV, where the batch goes on with a subset of its images (indexed unknowns)
    after the first stops."""
    prior, x = lowrank
    op_kw = {"size": 5} if name == "blind-motion-blur" else {}
    m = measure(x, make_operator(name, **op_kw), "gaussian:0.01", seed=2)
    s = make_solver("dmplug", iterations=30 if early_stop == "none" else 150, lr=0.1,
                    early_stop=early_stop, window=5, patience=8)
    batch = s(m.y, m.public(), prior, seed=5)
    for i in range(3):
        mi = measure(x[i:i + 1], make_operator(name, **op_kw), "gaussian:0.01", seed=2,
                     indices=[i])
        one = s(mi.y, mi.public(), prior, seed=image_generators(5, [i]))
        assert torch.allclose(batch.x[i], one.x[0], atol=1e-5)
        assert torch.allclose(batch.trace[key][i], one.trace[key][0], atol=1e-5)
        for k in ("picked_iteration", "stop_iteration", "iterations_run"):
            assert batch.trace[k][i] == one.trace[k][0]
    if early_stop == "wmv":  # the images stopped at different iterations, before the budget
        stops = batch.trace["stop_iteration"]
        assert (stops >= 0).all() and len(set(stops.tolist())) > 1, stops


def test_blind_bad_input(lowrank):
    prior, x = lowrank
    m = measure(x, make_operator("blind-gaussian-blur", size=5), "gaussian:0.01", seed=2)
    with pytest.raises(DiffinvError, match="blind DMPlug"):
        make_solver("dmplug", blind=False)(m.y, m.public(), prior)
    with pytest.raises(ShapeError, match="does not fit"):
        make_solver("dmplug", kernel_size=13, iterations=2)(m.y, m.public(), prior)
    m = measure(x, make_operator("blind-zoom-blur"), "gaussian:0.01", seed=2)
    with pytest.raises(DiffinvError, match="kernel_size"):
        make_solver("dmplug", kernel_size=3, iterations=2)(m.y, m.public(), prior)
