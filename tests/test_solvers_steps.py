"""One step of each solver against its paper's equation on small hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffinv.diffusion import DiffusionPrior
from diffinv.guidance import NoiseNLL, ResidualNorm
from diffinv.physics import make_noise, make_operator
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers._common import Problem
from diffinv.solvers.admm_pnp import admm_x_step
from diffinv.solvers.ddrm import ddrm_init, ddrm_update
from diffinv.solvers.dmps import dmps_likelihood_score
from diffinv.solvers.interleave import Context, Step, noised_measurement, project
from diffinv.solvers.pigdm import pigdm_vector


def _dense(op, params, shape):
    n = math.prod(shape)
    cols = [op(torch.eye(n, dtype=torch.float64)[i].reshape(1, *shape), **params).flatten()
            for i in range(n)]
    return torch.stack(cols, 1)


def test_residual_norm_is_unsquared_per_image():
    op = make_operator("sr-avgpool", factor=2)
    y = torch.randn(3, 1, 2, 2)
    x = torch.randn(3, 1, 4, 4)
    e = ResidualNorm(y, op, {})(x)
    want = torch.stack([torch.linalg.norm(y[i] - F.avg_pool2d(x[i:i + 1], 2)[0])
                        for i in range(3)])
    assert torch.allclose(e, want, atol=1e-6)
    noise = make_noise("poisson:20")
    assert torch.allclose(NoiseNLL(y, op, {}, noise)(x), noise.nll(y, F.avg_pool2d(x, 2)))


def _step_fixture(gaussian_problem, t=500, clip=True):
    """A DPS-style step on the 2x2 Gaussian prior, with the closed-form Jacobian of x0_hat."""
    mu, sigma, schedule, net = gaussian_problem
    prior = DiffusionPrior(net, schedule, image_shape=(1, 2, 2), clip_denoised=clip)
    a = float(schedule.alpha_bar[t])
    x_t = torch.tensor([[[[0.4, -1.3], [0.9, 0.2]]], [[[1.1, 0.3], [-0.7, 2.0]]]],
                       requires_grad=True)
    eps, _ = prior.net_out(x_t, t)
    x0 = prior.x0_from_eps(x_t, t, eps)
    C = a * sigma + (1 - a) * torch.eye(4, dtype=torch.float64)
    J = (torch.eye(4, dtype=torch.float64) - (1 - a) * torch.linalg.inv(C)) / a ** 0.5
    return prior, a, x_t, x0, eps, J


def _ctx_step(prior, y, op, params, noise, t, a, x_t, x0, eps, x_prev):
    ctx = Context(y=y, problem=Problem(op, params, make_noise(noise), (2, 1, 2, 2)), prior=prior)
    step = Step(0, t, t - 1, a, 1.0, a, x_t, x0, eps, x_prev, image_generators(0, [0, 1]), False)
    return ctx, step


def test_dps_step_matches_closed_form(gaussian_problem):
    """x_{i-1} = x' - s J^T A^T (A x0_hat - y) / ||y - A x0_hat|| with the exact Jacobian J."""
    prior, a, x_t, x0, eps, J = _step_fixture(gaussian_problem, clip=False)
    op = make_operator("inpaint-random")
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    y = torch.tensor([[[[0.3, 0.0], [-0.2, 0.5]]], [[[-0.1, 0.0], [0.4, 0.2]]]])
    x_prev = torch.randn(2, 1, 2, 2)
    solver = make_solver("dps", scale=0.7)
    ctx, step = _ctx_step(prior, y, op, {"mask": mask}, "gaussian:0.1", 500, a, x_t, x0, eps,
                          x_prev)
    solver.prepare(ctx)
    out = solver.guide(ctx, step)
    A = torch.diag(mask.flatten().double())
    for b in range(2):
        r = A @ x0[b].detach().flatten().double() - y[b].flatten().double()
        g = J.T @ A.T @ r / r.norm()
        want = x_prev[b].flatten().double() - 0.7 * g
        assert torch.allclose(out[b].flatten().double(), want, atol=1e-5)


def test_dps_gradient_goes_through_the_clamp(gaussian_problem):
    """Clamped pixels of x0_hat pass no gradient (clamp inside the graph)."""
    prior, a, x_t, x0, eps, J = _step_fixture(gaussian_problem, t=50, clip=True)
    assert ((x0.detach().abs() >= 1).any())
    op = make_operator("identity")
    y = torch.zeros(2, 1, 2, 2)
    ctx, step = _ctx_step(prior, y, op, {}, "gaussian:0.1", 50, a, x_t, x0, eps,
                          torch.zeros(2, 1, 2, 2))
    solver = make_solver("dps", scale=1.0)
    solver.prepare(ctx)
    out = solver.guide(ctx, step)
    for b in range(2):
        x0b = x0[b].detach().flatten().double()
        r = x0b * (x0b.abs() < 1)  # d clamp / d u = 0 where clamped
        g = J.T @ r / x0b.norm()
        assert torch.allclose(-out[b].flatten().double(), g, atol=1e-5)


def test_dps_nll_step_descends_noise_nll(gaussian_problem):
    prior, a, x_t, x0, eps, J = _step_fixture(gaussian_problem, clip=False)
    op = make_operator("identity")
    y = torch.tensor([[[[0.3, 0.1], [-0.2, 0.5]]], [[[-0.1, 0.2], [0.4, 0.2]]]])
    ctx, step = _ctx_step(prior, y, op, {}, "gaussian:0.2", 500, a, x_t, x0, eps,
                          torch.zeros(2, 1, 2, 2))
    solver = make_solver("dps-nll", scale=0.01)
    solver.prepare(ctx)
    out = solver.guide(ctx, step)
    for b in range(2):
        r = x0[b].detach().flatten().double() - y[b].flatten().double()
        assert torch.allclose(out[b].flatten().double(), -0.01 * J.T @ r / 0.2 ** 2, atol=1e-5)


def test_pigdm_vector_and_step(gaussian_problem):
    """v = A^T (r^2 A A^T + sigma^2 I)^{-1} (y - A x0); the step adds J^T v times the weighting's
    coefficient (score: sqrt(ab') (1-a)/sqrt(a) - c2 sqrt(1-a); official: RED-diff's)."""
    op = make_operator("sr-avgpool", factor=2)
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    y = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    svd = op.svd((2, 1, 4, 4)).to(dtype=torch.float64)
    A = _dense(op, {}, (1, 4, 4))
    r2, sy = 0.3, 0.05
    v = pigdm_vector(x0, y, svd, r2, sy)
    M = torch.linalg.inv(r2 * A @ A.T + sy ** 2 * torch.eye(4, dtype=torch.float64))
    for b in range(2):
        want = A.T @ M @ (y[b].flatten() - A @ x0[b].flatten())
        assert torch.allclose(v[b].flatten(), want, atol=1e-9)
    # the full step on the Gaussian prior (identity operator, eta = 0), both weightings
    for weighting in ("score", "official"):
        _check_pigdm_step(gaussian_problem, weighting)


def _check_pigdm_step(gaussian_problem, weighting):
    prior, a, x_t, x0g, eps, J = _step_fixture(gaussian_problem, clip=False)
    ap = 0.6
    yy = torch.tensor([[[[0.3, 0.1], [-0.2, 0.5]]], [[[-0.1, 0.2], [0.4, 0.2]]]])
    solver = make_solver("pigdm", eta=0.0, weighting=weighting)
    ctx, step = _ctx_step(prior, yy, make_operator("identity"), {}, "gaussian:0.1", 500, a, x_t,
                          x0g, eps, torch.zeros(2, 1, 2, 2))
    step.abar_prev = ap
    solver.prepare(ctx)
    out = solver.guide(ctx, step)
    rr2 = solver.r2(a)
    c2 = (1 - ap) ** 0.5
    for b in range(2):
        res = yy[b].flatten().double() - x0g[b].detach().flatten().double()
        g = J.T @ res / (rr2 + 0.01)
        if weighting == "score":  # x0 moves by (1 - a)/sqrt(a) g: the likelihood score
            coef = ap ** 0.5 * (1 - a) / a ** 0.5 - c2 * (1 - a) ** 0.5
        else:  # RED-diff's pgdm.py: x0 moves by sqrt(a) r^2 g, eps re-derived from x0
            coef = (ap ** 0.5 - c2 * a ** 0.5 / (1 - a) ** 0.5) * a ** 0.5 * rr2
        assert torch.allclose(out[b].flatten().double(), coef * g, atol=1e-5)


def test_dmps_score_is_gradient_of_gaussian_likelihood():
    """grad_{x_t} log N(y; A x_t/sqrt(a), sigma^2 I + (1-a)/a A A^T), by autograd on the density."""
    op = make_operator("sr-avgpool", factor=2)
    svd = op.svd((2, 1, 4, 4)).to(dtype=torch.float64)
    A = _dense(op, {}, (1, 4, 4))
    a, sy = 0.4, 0.1
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    y = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    g = dmps_likelihood_score(x, y, svd, a, sy)
    cov = sy ** 2 * torch.eye(4, dtype=torch.float64) + (1 - a) / a * A @ A.T
    for b in range(2):
        xb = x[b].flatten().clone().requires_grad_(True)
        lp = torch.distributions.MultivariateNormal(A @ xb / a ** 0.5, cov).log_prob(y[b].flatten())
        (want,) = torch.autograd.grad(lp, xb)
        assert torch.allclose(g[b].flatten(), want, atol=1e-8)


def test_ddrm_update_cases():
    """Each coordinate follows its case of Kawar et al. eq. 7-8."""
    torch.manual_seed(0)
    n, m = 6, 4
    s = torch.tensor([[0.0, 0.5, 2.0, 0.03]])
    c, x0, z = torch.randn(1, n), torch.randn(1, n), torch.randn(1, n)
    yb = torch.randn(1, m)
    st, sn, sy, eta, eb = 1.3, 0.4, 0.1, 0.85, 0.7
    out = ddrm_update(c, x0, yb, s, st, sn, sy, eta, eb, z)
    k = (1 - eta ** 2) ** 0.5
    for i in range(n):
        si = float(s[0, i]) if i < m else 0.0
        if si == 0:
            want = x0[0, i] + k * sn * (c[0, i] - x0[0, i]) / st + eta * sn * z[0, i]
        elif sn < sy / si:
            want = x0[0, i] + k * sn * (yb[0, i] - x0[0, i]) / (sy / si) + eta * sn * z[0, i]
        else:
            want = (1 - eb) * x0[0, i] + eb * yb[0, i] + (sn ** 2 - eb ** 2 * sy ** 2 / si ** 2
                                                          ) ** 0.5 * z[0, i]
        assert torch.isclose(out[0, i], torch.as_tensor(want, dtype=out.dtype), atol=1e-6), i
    init = ddrm_init(yb, s, 2.5, sy, z)
    for i in range(n):
        si = float(s[0, i]) if i < m else 0.0
        want = (yb[0, i] + (6.25 - sy ** 2 / si ** 2) ** 0.5 * z[0, i]) if si * 2.5 > sy \
            else 2.5 * z[0, i]
        assert torch.isclose(init[0, i], torch.as_tensor(want), atol=1e-6), i


def test_admm_x_step_solves_the_normal_equations():
    op = make_operator("sr-avgpool", factor=2)
    svd = op.svd((1, 1, 4, 4)).to(dtype=torch.float64)
    A = _dense(op, {}, (1, 4, 4))
    y = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    w_img = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    rho, sy = 3.0, 0.2
    x = svd.v(admm_x_step(svd.vt(w_img), svd.ut(y), svd.singulars().double(), rho, sy, svd.m))
    lhs = A.T @ A / sy ** 2 + rho * torch.eye(16, dtype=torch.float64)
    want = torch.linalg.solve(lhs, A.T @ y.flatten() / sy ** 2 + rho * w_img.flatten())
    assert torch.allclose(x.flatten(), want, atol=1e-9)


def test_ilvr_projection_is_the_low_pass_replacement():
    """phi(y_t) + x' - phi(x') with phi = nearest-up(avg-down) equals x' + A^+(y_t - A x')."""
    op = make_operator("sr-avgpool", factor=2)
    problem = Problem(op, {}, make_noise("none"), (2, 1, 4, 4))
    svd = op.svd((2, 1, 4, 4))
    xp = torch.randn(2, 1, 4, 4)
    y = torch.randn(2, 1, 2, 2)
    gens = image_generators(3, [0, 1])
    yt = noised_measurement(y, problem, 0.3, gens)
    out = project(xp, yt, problem, svd)

    def up(v):
        return v.repeat_interleave(2, -2).repeat_interleave(2, -1)

    want = up(yt) + xp - up(F.avg_pool2d(xp, 2))
    assert torch.allclose(out, want, atol=1e-5)
    # the noised reference is sqrt(a) y + sqrt(1 - a) A z with z from the same generators
    z = torch.stack([torch.randn(1, 4, 4, generator=g) for g in image_generators(3, [0, 1])])
    assert torch.allclose(yt, 0.3 ** 0.5 * y + 0.7 ** 0.5 * F.avg_pool2d(z, 2), atol=1e-6)


def test_mcg_step_is_dps_then_projection(gaussian_problem):
    prior, a, x_t, x0, eps, J = _step_fixture(gaussian_problem, clip=False)
    op = make_operator("inpaint-random")
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    y = torch.tensor([[[[0.3, 0.0], [-0.2, 0.5]]], [[[-0.1, 0.0], [0.4, 0.2]]]])
    x_prev = torch.randn(2, 1, 2, 2)
    mcg, dps = make_solver("mcg", scale=0.4), make_solver("dps", scale=0.4)
    ctx, step = _ctx_step(prior, y, op, {"mask": mask}, "gaussian:0.1", 500, a, x_t, x0, eps,
                          x_prev)
    step.abar_prev = 1.0  # last step: project onto {A x = y} exactly
    mcg.prepare(ctx)
    out = mcg.guide(ctx, step)
    prior, a, x_t, x0, eps, J = _step_fixture(gaussian_problem, clip=False)
    ctx2, step2 = _ctx_step(prior, y, op, {"mask": mask}, "gaussian:0.1", 500, a, x_t, x0, eps,
                            x_prev)
    dps.prepare(ctx2)
    x_dps = dps.guide(ctx2, step2)
    assert torch.allclose(out, (1 - mask) * x_dps + mask * y, atol=1e-6)


@pytest.mark.parametrize("name", ["ddrm", "pigdm", "dmps", "mcg", "ilvr", "admm-pnp"])
def test_registered_with_requirements(name):
    s = make_solver(name)
    assert s.name == name and "svd" in s.requires
