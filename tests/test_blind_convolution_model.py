"""The kernel-based blind solvers on blind rotation / zoom blur, which are not convolutions.

As the CL-DPS paper ran its kernel baselines, BlindDPS, GibbsDDRM and FastEM fit their
convolution model (a 9x9 circular kernel) to these families (``solvers/_blind.py``). With the
oracle image prior of ``tests/blind_problem.py`` (it all but knows the 16x16 white-noise image),
what is left to check is that the kernel machinery fits the best convolution model: with the
true image ``x``, the residual ``||y - k_hat * x||`` is within 1.85x that of the least-squares
9x9 kernel ``k* = argmin_k ||y - k * x||`` (the best any convolution model can do). Measured
(seed 0): 1.20-1.72x for the three solvers; with the kernel updates switched off (BlindDPS
``kernel_scale = 0``, GibbsDDRM ``lr = 0``, FastEM ``beta = 1e12``) 1.98-2.30x, so the test fails
for a solver whose kernel does not follow the data. The trace names the forward model fitted.
"""

from __future__ import annotations

import pytest
import torch

from blind_problem import blind_measurement, oracle_prior
from diffinv.physics.blur import blur
from diffinv.solvers import make_solver
from diffinv.solvers._blind import kernel_design

SETTINGS = {
    "blind-dps": {"steps": 100},
    "gibbsddrm": {"steps": 20},
    "fastem": {"steps": 20},
}


@pytest.mark.parametrize("family", ["blind-rotation-blur", "blind-zoom-blur"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_kernel_solvers_fit_their_convolution_model(name, family):
    prior, x = oracle_prior(0)
    m = blind_measurement(x, family)
    r = make_solver(name, **SETTINGS[name])(m.y, m.public(), prior, seed=0)
    assert "not a convolution" in r.trace["forward_model"], r.trace["forward_model"]
    k = r.trace["kernel"]
    assert k.shape == (1, 9, 9) and torch.isfinite(k).all() and torch.isfinite(r.x).all()
    assert torch.allclose(k.sum((1, 2)), torch.ones(1), atol=1e-4)
    fitted = (m.y - blur(x, k, "circular")).norm()
    design = kernel_design(x.double(), 9, "circular")[0]
    best_k = torch.linalg.lstsq(design, m.y.double().flatten()).solution
    best = (m.y.double().flatten() - design @ best_k).norm()
    assert fitted < 1.85 * best, (float(fitted), float(best))


def test_kernel_families_keep_their_own_model():
    prior, x = oracle_prior(0)
    m = blind_measurement(x, "blind-motion-blur")
    r = make_solver("fastem", steps=3)(m.y, m.public(), prior, seed=0)
    assert r.trace["forward_model"].startswith("convolution, 9x9 kernel")
