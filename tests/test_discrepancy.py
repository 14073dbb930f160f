"""The discrepancy-principle safeguard of blind kernel solvers (``discrepancy = tau``).

Statistics: for the true (x, k), ``r^2 = ||n||^2 / (sigma^2 m)`` is chi-square(m) / m with
m = 32 x 32 = 1024 values per image, so ``r`` has mean ~1 and standard deviation ~1 / sqrt(2 m)
= 0.022; the tolerance below is six of those.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffinv.errors import DiffinvError
from diffinv.physics import make_operator, measure
from diffinv.physics.kernels import motion_kernel
from diffinv.solvers import make_solver
from diffinv.solvers._blind import blind_problem, delta_kernel
from diffinv.solvers._discrepancy import apply_fallback, discrepancy_ratios
from diffinv.solvers.base import Solver

SIGMA = 0.02
M = 32 * 32


class NoPrior:
    nfe = 0
    image_shape = (1, 32, 32)

    def reset_nfe(self) -> None:
        pass


def images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 32, 32, generator=g) * 2 - 1) * 0.8


def true_kernels(n: int = 3) -> torch.Tensor:
    return torch.stack([motion_kernel(9, 0.5, torch.Generator().manual_seed(s))
                        for s in range(n)]).float()


def blind(x, k, noise=f"gaussian:{SIGMA}", first=0):
    return measure(x, make_operator("blind-motion-blur"), noise, seed=0, params={"kernel": k},
                   indices=list(range(first, first + x.shape[0])))


class Fixed(Solver):
    """A stand-in blind solver returning a given (x, kernel): the safeguard's input."""

    estimates_kernel = True

    def __init__(self, x, k):
        self.x, self.k = x, k

    def solve(self, y, physics, prior, generators):
        return self.x.clone(), {"kernel": self.k.clone()}


def test_the_true_estimate_leaves_a_residual_of_the_noise_level():
    x, k = images(), true_kernels()
    m = blind(x, k)
    bp = blind_problem(Fixed(x, k), m.y, m.public())
    r = discrepancy_ratios(m.y, x, k, bp.blur, SIGMA)
    assert torch.allclose(r, torch.ones(3), atol=6 / math.sqrt(2 * M))


def test_images_above_tau_become_y_with_a_delta_kernel_the_others_are_untouched():
    x, k = images(), true_kernels()
    m = blind(x, k)
    wide = k.clone()
    wide[1] = torch.full((9, 9), 1 / 81)            # image 1: a far too wide kernel estimate
    solver = Fixed(x, wide)
    solver.discrepancy = 1.5
    res = solver(m.y, m.public(), NoPrior())
    assert res.trace["fallback"].tolist() == [False, True, False]
    assert res.trace["discrepancy"][1] > 1.5 > res.trace["discrepancy"][0]
    assert torch.equal(res.x[1], m.y[1]) and torch.equal(res.x[[0, 2]], x[[0, 2]])
    assert torch.equal(res.trace["kernel"][1], delta_kernel(1, 9)[0])
    assert torch.equal(res.trace["kernel"][[0, 2]], wide[[0, 2]])
    assert torch.equal(res.trace["kernel_before_fallback"], wide)


def test_each_images_decision_is_its_own_batch_independent():
    x, k = images(), true_kernels()
    m = blind(x, k)
    wide = k.clone()
    wide[1] = torch.full((9, 9), 1 / 81)
    whole = Fixed(x, wide)
    whole.discrepancy = 1.5
    r_all = whole(m.y, m.public(), NoPrior()).trace["discrepancy"]
    for i in range(3):
        one = blind(x[i:i + 1], k[i:i + 1], first=i)
        s = Fixed(x[i:i + 1], wide[i:i + 1])
        s.discrepancy = 1.5
        r = s(one.y, one.public(), NoPrior()).trace["discrepancy"]
        assert torch.allclose(r, r_all[i:i + 1], atol=1e-6)


def test_make_solver_takes_it_for_kernel_solvers_only_with_tau_above_one():
    assert make_solver("pan-l0", discrepancy=2).discrepancy == 2.0
    assert make_solver("pan-l0").discrepancy is None
    with pytest.raises(DiffinvError, match="estimates no blur kernel"):
        make_solver("dps", discrepancy=2.0)
    for bad in (1.0, 0.5, math.inf, "2", True):
        with pytest.raises(DiffinvError, match="number > 1"):
            make_solver("pan-l0", discrepancy=bad)


def test_it_refuses_what_it_cannot_check():
    x, k = images(1), true_kernels(1)
    solver = Fixed(x, k)
    poisson = blind(x, k, noise="poisson:30")
    with pytest.raises(DiffinvError, match="Gaussian noise"):
        apply_fallback(solver, poisson.y, poisson.public(), x, {"kernel": k}, 2.0)
    m = blind(x, k)
    with pytest.raises(DiffinvError, match="no kernel estimate"):
        apply_fallback(solver, m.y, m.public(), x, {}, 2.0)
    known = measure(x, make_operator("motion-blur"), f"gaussian:{SIGMA}", seed=0)
    with pytest.raises(DiffinvError, match="not blind"):
        apply_fallback(solver, known.y, known.public(), x, {"kernel": k}, 2.0)


def test_a_real_solver_with_the_option_returns_y_where_it_rejects_and_itself_elsewhere():
    """Pan-L0 (no prior, ~1 s): with tau just above 1 every image whose estimate leaves more than
    the noise is y; with a huge tau the result is the solver's own, bit for bit."""
    x, k = images(2), true_kernels(2)
    m = blind(x, k)
    plain = make_solver("pan-l0", xk_iter=1)(m.y, m.public(), NoPrior(), seed=0)
    loose = make_solver("pan-l0", xk_iter=1, discrepancy=1e6)(m.y, m.public(), NoPrior(), seed=0)
    assert torch.equal(loose.x, plain.x) and not loose.trace["fallback"].any()
    strict = make_solver("pan-l0", xk_iter=1, discrepancy=1.0001)(m.y, m.public(), NoPrior(),
                                                                    seed=0)
    rejected = strict.trace["discrepancy"] > 1.0001
    assert rejected.any()
    assert torch.equal(strict.x[rejected], m.y[rejected])
    assert torch.equal(strict.x[~rejected], plain.x[~rejected])
