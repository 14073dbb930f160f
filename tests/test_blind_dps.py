"""BlindDPS: the kernel chain recovers a hidden kernel; batching, seeds, bad input.

Recovery (tests/blind_problem.py: the image prior all but knows the 16x16 image): 100 respaced
steps with the shipped ``kernels9`` kernel prior and the defaults (``kernel_scale = 0.3``, no L1
penalty) bring the kernel MSE to < 5e-5 (observed 6e-6 and 7e-6), while the kernel chain without
the measurement (``scale = kernel_scale = 0``) draws kernels >= 1.7e-4 away, and a delta is
> 1e-2 away.
"""

from __future__ import annotations

import pytest
import torch

from blind_problem import blind_measurement, kernel_mse, oracle_prior
from diffinv.diffusion.zoo import load_prior
from diffinv.errors import DiffinvError
from diffinv.physics import measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers._blind import KernelDivergedError


@pytest.fixture(scope="module")
def kprior():
    return load_prior("kernels9")


@pytest.mark.parametrize("family,which", [("blind-motion-blur", 0), ("blind-gaussian-blur", 1)])
def test_recovers_the_kernel(kprior, family, which):
    prior, x = oracle_prior(which)
    m = blind_measurement(x, family, first=which)
    solve = make_solver("blind-dps", kernel_prior=kprior, steps=100)
    r = solve(m.y, m.public(), prior, seed=0)
    k = r.trace["kernel"]
    assert k.shape == (1, 9, 9) and (k >= 0).all()
    assert torch.allclose(k.sum((1, 2)), torch.ones(1), atol=1e-5)
    err = kernel_mse(k, m)
    unguided = make_solver("blind-dps", kernel_prior=kprior, steps=100, scale=0, kernel_scale=0)(
        m.y, m.public(), prior, seed=0)
    assert err < 5e-5 and err < 0.3 * kernel_mse(unguided.trace["kernel"], m), err
    assert (r.x - x).abs().mean() < 0.05
    assert r.nfe == 200 and r.trace["backward_nfe"] == 200
    assert len(r.trace["log_residual"]) == 100


def test_batch_equals_one_by_one_and_seeds(kprior):
    prior, x = oracle_prior()
    m = blind_measurement(x)
    solve = make_solver("blind-dps", kernel_prior=kprior, steps=20)
    both = solve(m.y, m.public(), prior, seed=3)
    for i in range(2):
        gi = image_generators(3, [i])
        one = solve(m.y[i:i + 1], m.public(), prior, seed=gi)
        assert torch.allclose(one.x, both.x[i:i + 1], atol=1e-4)
        assert torch.allclose(one.trace["kernel"], both.trace["kernel"][i:i + 1], atol=2e-4)
    again = solve(m.y, m.public(), prior, seed=3)
    assert torch.equal(again.x, both.x) and torch.equal(again.trace["kernel"],
                                                        both.trace["kernel"])
    other = solve(m.y, m.public(), prior, seed=4)
    assert not torch.allclose(other.trace["kernel"], both.trace["kernel"])


def test_bad_input(kprior):
    prior, x = oracle_prior()
    solve = make_solver("blind-dps", kernel_prior=kprior, steps=3)
    known = measure(x, "motion-blur", "gaussian:0.02", seed=0)
    with pytest.raises(DiffinvError, match="not blind"):
        solve(known.y, known.public(), prior)
    m7 = blind_measurement(x, size=7)
    with pytest.raises(DiffinvError, match=r"9x9 kernels but the blind family's kernel is 7x7"):
        solve(m7.y, m7.public(), prior)
    with pytest.raises(DiffinvError, match=">= 0"):
        make_solver("blind-dps", scale=-1)


class _NaNAt(torch.nn.Module):
    """Wraps a network; its output for batch row ``row`` is NaN from the ``after``-th call on."""

    def __init__(self, net, row: int, after: int):
        super().__init__()
        self.net, self.row, self.after, self.calls = net, row, after, 0

    def forward(self, x, t):
        out = self.net(x, t)
        self.calls += 1
        if self.calls > self.after:
            out = out.clone()
            out[self.row] = float("nan")
        return out


def test_a_non_finite_kernel_stops_with_a_clear_error():
    prior, x = oracle_prior()
    m = blind_measurement(x)
    kp = load_prior("kernels9")
    kp.network = _NaNAt(kp.network, row=1, after=2)
    with pytest.raises(KernelDivergedError, match=r"image\(s\) \[1\]") as e:
        make_solver("blind-dps", kernel_prior=kp, steps=10)(m.y, m.public(), prior, seed=0)
    assert e.value.images == [1] and torch.isfinite(e.value.last_kernel).all()
    assert e.value.step == 2
