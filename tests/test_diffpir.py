"""DiffPIR: the data step solves its quadratic exactly, the re-noising step is DDIM when the data
step is inert and zeta = 0, and on a Gaussian prior the samples sit at the exact posterior (within
the stated approximation error)."""

from __future__ import annotations

import pytest
import torch

from diffinv.diffusion import DiffusionPrior
from diffinv.errors import DiffinvError
from diffinv.physics import make_operator, measure
from diffinv.solvers import make_solver
from diffinv.solvers.diffpir import gradient_data_step, svd_data_step
from test_solvers_gaussian import N, _problem


def _dense(op, shape, params):
    """The matrix of a linear operator on images of ``shape`` (columns: images of the basis)."""
    n = int(torch.tensor(shape).prod())
    cols = [op(torch.eye(n, dtype=torch.float64)[i].reshape(1, *shape), **params).flatten()
            for i in range(n)]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("name, shape, kwargs", [
    ("sr-avgpool", (1, 4, 4), {"factor": 2}),
    ("gaussian-blur", (1, 6, 6), {"size": 3, "std": 1.0, "boundary": "circular"}),
    ("inpaint-random", (1, 3, 3), {"p": 0.5}),
])
def test_svd_data_step_is_the_exact_minimiser(name, shape, kwargs):
    g = torch.Generator().manual_seed(3)
    op = make_operator(name, **kwargs)
    x = torch.rand(2, *shape, generator=g, dtype=torch.float64) * 2 - 1
    m = measure(x.float(), op, "gaussian:0.05", seed=4)
    x0 = torch.rand(2, *shape, generator=g, dtype=torch.float64) * 2 - 1
    rho = 0.37
    svd = op.svd((2, *shape), **m.params).to("cpu", torch.float64)
    got = svd_data_step(x0, m.y.double(), svd, rho)
    for i in range(2):
        params = {k: v[i:i + 1] for k, v in m.params.items()}
        A = _dense(op, shape, params)
        rhs = A.T @ m.y[i].double().flatten() + rho * x0[i].flatten()
        want = torch.linalg.solve(A.T @ A + rho * torch.eye(A.shape[1], dtype=torch.float64), rhs)
        assert torch.allclose(got[i].flatten(), want, atol=1e-5), (name, i)


def test_gradient_data_step_is_a_step_on_the_data_term():
    op = make_operator("inpaint-random", p=0.5)
    x = torch.rand(1, 1, 3, 3) * 2 - 1
    m = measure(x, op, "gaussian:0.05", seed=0)
    x0 = torch.zeros_like(x)
    rho = 2.0
    got = gradient_data_step(x0, m.y, lambda v: op(v, **m.params), rho, 1)
    want = x0 - op.adjoint(op(x0, **m.params) - m.y, **m.params) / (4 * rho)
    assert torch.allclose(got, want, atol=1e-6)


def test_inert_data_step_and_zeta_0_is_ddim(gaussian_problem):
    """With lam -> inf the data step returns x0 and with zeta = 0 the re-noising is DDIM(eta=0):
    the run equals a guidance-free DDIM run on the same (quad) timesteps."""
    prior, y, pub, *_ = _problem(gaussian_problem)
    y, pub.params = y[:8], {"mask": pub.params["mask"][:8]}
    a = make_solver("diffpir", lam=1e12, zeta=0.0, steps=30)(y, pub, prior, seed=0).x
    b = make_solver("pigdm", scale=0.0, eta=0.0, steps=30, spacing="quad")(y, pub, prior,
                                                                            seed=0).x
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_gaussian_posterior(gaussian_problem):
    """Isotropic prior N(mu, 0.25 I), half the pixels observed with sigma_y = 0.1. The data step
    leaves unobserved pixels to the prior: their sample mean and standard deviation are the
    posterior's (= the prior's) within 4 SE and 10%. Observed pixels: HQS is not an exact
    posterior sampler; its mean is within 4 SE + 0.02 (0.2 posterior sd) of the posterior mean."""
    prior, y, pub, mean, cov, _, obs = _problem(gaussian_problem, iso=0.25)
    x = make_solver("diffpir", steps=100)(y, pub, prior, seed=0).x.flatten(1).double()
    m, sd = x.mean(0), x.std(0)
    se = sd / N ** 0.5
    hidden = ~obs
    assert ((m - mean)[hidden].abs() <= 4 * se[hidden]).all(), ((m - mean) / se)
    assert ((sd[hidden] / cov.diag()[hidden].sqrt() - 1).abs() < 0.10).all(), sd
    assert ((m - mean)[obs].abs() <= 4 * se[obs] + 0.02).all(), (m, mean)


def test_bad_settings_are_refused():
    with pytest.raises(DiffinvError, match="zeta"):
        make_solver("diffpir", zeta=1.5)
    with pytest.raises(DiffinvError, match="lam"):
        make_solver("diffpir", lam=0.0)
    with pytest.raises(DiffinvError, match="grad_steps"):
        make_solver("diffpir", grad_steps=0)


def test_nonlinear_operator_takes_the_gradient_step(gaussian_problem):
    mu, sigma, schedule, net = gaussian_problem
    x = torch.zeros(1, 1, 32, 32)
    m = measure(x, make_operator("nonlinear-blur"), "gaussian:0.05", seed=0)

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    prior = DiffusionPrior(Zero(), schedule, image_shape=(1, 32, 32))
    r = make_solver("diffpir", steps=5)(m.y, m.public(), prior, seed=0)
    assert r.trace["log_data_step"] == "gradient x1" and torch.isfinite(r.x).all()
