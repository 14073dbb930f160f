"""GibbsDDRM: Langevin kernel updates recover a hidden kernel; batching, seeds, bad input.

Recovery (tests/blind_problem.py: the image prior all but knows the 16x16 image): 20 DDRM steps,
kernel updates from 70% of T, 100 Langevin iterations each, ``lr = 1e-6`` and ``gamma = 0``
(one 16x16 image has ~1/4 of the curvature of a 32x32 one and the test has 20 x 100 x 3 instead
of 70 x 500 x 3 Langevin iterations, so the step is larger than the 32x32 default) bring the
kernel MSE from the initial exp(-r/10) kernel's (1.4e-4 and 9.8e-4) to < 6e-5 and < 0.3x the
start (observed 1.3e-5 and 3.1e-5).
"""

from __future__ import annotations

import pytest
import torch

from blind_problem import blind_measurement, kernel_mse, oracle_prior
from diffinv.errors import DiffinvError
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers._blind import KernelDivergedError, kernel_design
from diffinv.solvers.gibbsddrm import exp_init_kernel, langevin_kernel

FAST = dict(steps=20, langevin_iters=100, lr=1e-6, gamma=0.0)


@pytest.mark.parametrize("family,which", [("blind-motion-blur", 0), ("blind-gaussian-blur", 1)])
def test_recovers_the_kernel(family, which):
    prior, x = oracle_prior(which)
    m = blind_measurement(x, family, first=which)
    r = make_solver("gibbsddrm", **FAST)(m.y, m.public(), prior, seed=0)
    k = r.trace["kernel"]
    assert k.shape == (1, 9, 9) and (k >= 0).all()
    assert torch.allclose(k.sum((1, 2)), torch.ones(1), atol=1e-5)
    start = kernel_mse(exp_init_kernel(1, 9), m)
    err = kernel_mse(k, m)
    assert err < 6e-5 and err < 0.3 * start, (err, start)
    assert (r.x - x).abs().mean() < 0.03
    # 20 steps; updates at t <= 700 except t = 0: 14 steps x 3 updates, one network call each
    assert r.trace["kernel_updates"] == 42 and r.nfe == 20 + 42


def test_langevin_gradient_is_the_energy_gradient():
    """With lr -> 0 and no noise one iteration moves phi by -(lr/2) grad U (U by autograd)."""
    prior, x = oracle_prior()
    m = blind_measurement(x)
    D = kernel_design(x, 9, "circular")
    gram, rhs = D.transpose(1, 2) @ D, (D.transpose(1, 2) @ m.y.flatten(1)[:, :, None])[:, :, 0]
    phi = exp_init_kernel(2, 9).reshape(2, 81).double()
    p = phi.clone().requires_grad_()
    from diffinv.physics.blur import blur

    U = ((m.y.double() - blur(x.double(), p.reshape(2, 9, 9))).square().sum() / (2 * 0.02 ** 2)
         + 7.0 * p.abs().sum())
    (g,) = torch.autograd.grad(U, p)
    lr = 1e-9
    out = langevin_kernel(phi, gram.double(), rhs.double(), 0.02, 7.0, lr,
                          torch.zeros(2, 1, 81, dtype=torch.float64))
    want = phi - 0.5 * lr * g
    assert torch.allclose(out, want / want.sum(1, keepdim=True), rtol=1e-6, atol=1e-12)


def test_batch_equals_one_by_one_and_seeds():
    prior, x = oracle_prior()
    m = blind_measurement(x)
    solve = make_solver("gibbsddrm", **FAST)
    both = solve(m.y, m.public(), prior, seed=3)
    for i in range(2):
        one = solve(m.y[i:i + 1], m.public(), prior, seed=image_generators(3, [i]))
        assert torch.allclose(one.x, both.x[i:i + 1], atol=1e-5)
        assert torch.allclose(one.trace["kernel"], both.trace["kernel"][i:i + 1], atol=1e-6)
    again = solve(m.y, m.public(), prior, seed=3)
    assert torch.equal(again.x, both.x) and torch.equal(again.trace["kernel"],
                                                        both.trace["kernel"])
    other = solve(m.y, m.public(), prior, seed=4)
    assert not torch.allclose(other.trace["kernel"], both.trace["kernel"])


def test_bad_input():
    prior, x = oracle_prior()
    solve = make_solver("gibbsddrm", steps=3)
    known = measure(x, "gaussian-blur", "gaussian:0.02", seed=0)
    with pytest.raises(DiffinvError, match="not blind"):
        solve(known.y, known.public(), prior)
    zero = blind_measurement(x, boundary="zero")
    with pytest.raises(DiffinvError, match="circular"):
        solve(zero.y, zero.public(), prior)
    poisson = measure(x, make_operator("blind-motion-blur"), "poisson:1", seed=0)
    with pytest.raises(DiffinvError, match="Gaussian noise"):
        solve(poisson.y, poisson.public(), prior)
    with pytest.raises(DiffinvError, match="eta_b"):
        make_solver("gibbsddrm", eta_b=1.5)
    m = blind_measurement(x)
    with pytest.raises(KernelDivergedError, match=r"image\(s\) \[0, 1\]"):
        make_solver("gibbsddrm", steps=20, langevin_iters=5, lr=1e300)(m.y, m.public(), prior)
