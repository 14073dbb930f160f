"""RED-diff: its regulariser's gradient has the closed form of a Gaussian prior (stop-gradient in
the right place, SNR weight), the run fits the data and pulls unobserved pixels to the prior, and
blind RED-diff estimates kernels / angles per image."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import GaussianEps
from diffinv.diffusion import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import DiffinvError
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers.red_diff import denoiser_weight, red_diff_loss, red_diff_timesteps
from test_solvers_gaussian import N, _problem


def test_timesteps_are_the_official_grid():
    assert red_diff_timesteps(1000, 4) == [750, 500, 250, 0]
    assert red_diff_timesteps(1000, 1000)[:2] == [999, 998]
    with pytest.raises(DiffinvError):
        red_diff_timesteps(1000, 0)


@pytest.mark.parametrize("t", [50, 400, 900])
def test_regulariser_gradient_has_the_gaussian_closed_form(t):
    """Prior N(m, s^2 I): E_eps[eps*(x_t) - eps] = sqrt(ab (1 - ab)) (mu - m) / (ab s^2 + 1 - ab),
    so the expected gradient of the regulariser in mu is lam (1 - ab) (mu - m) / (ab s^2 + 1 - ab)
    / n, with no Jacobian of the network (the stop-gradient). Mean of K draws within 4 SE."""
    sched = VPSchedule.linear()
    m = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    s2 = 0.25
    net = GaussianEps(m, s2 * torch.eye(4, dtype=torch.float64), (1, 2, 2), sched)
    ab = float(sched.alpha_bar[t])
    K, lam = 20000, 0.25
    g = torch.Generator().manual_seed(t)
    mu = torch.tensor([0.5, 0.4, -0.6, 0.2], dtype=torch.float64).reshape(1, 1, 2, 2)
    mu = mu.expand(K, 1, 2, 2).clone().requires_grad_(True)
    eps = torch.randn(K, 1, 2, 2, generator=g, dtype=torch.float64)
    x_t = ab ** 0.5 * mu + (1 - ab) ** 0.5 * eps           # in the graph: a missing stop-gradient
    eps_pred = net(x_t, torch.full((K,), t))                # would add the network's Jacobian
    w = denoiser_weight(ab, lam, "linear")
    assert w == pytest.approx(lam * math.sqrt((1 - ab) / ab))
    total, reg, obs = red_diff_loss(mu, eps_pred, eps, torch.zeros(K, 3), w, 1.0)
    (grad,) = torch.autograd.grad(reg.sum(), mu)
    grad = grad.flatten(1)
    want = lam * (1 - ab) * (mu[0].detach().flatten() - m) / (ab * s2 + 1 - ab) / 4
    se = grad.std(0) / K ** 0.5
    assert ((grad.mean(0) - want).abs() <= 4 * se + 1e-12).all(), ((grad.mean(0) - want) / se)
    assert torch.equal(obs, torch.zeros(K, dtype=torch.float64))


def test_fits_the_data_and_pulls_the_unobserved_pixels_to_the_prior(gaussian_problem):
    """Half the pixels observed (sigma_y = 0.1), prior N(mu, 0.25 I). The data weight wins as t -> 0,
    so the mean of the observed pixels ends at y (within 4 SE; each run ends within a few Adam
    steps of it); unobserved ones start at A^+ y = 0 and only the regulariser moves them: their
    mean ends at the prior mean within 4 SE; with lam = 0 they do not move at all."""
    prior, y, pub, _, _, m, obs = _problem(gaussian_problem, iso=0.25)
    x = make_solver("red-diff")(y, pub, prior, seed=0).x.flatten(1).double()
    yv = y[0].flatten().double()
    se = x.std(0) / N ** 0.5
    assert ((x.mean(0) - yv)[obs].abs() <= 4 * se[obs]).all(), ((x.mean(0) - yv) / se)
    assert (x.std(0)[obs] < 0.03).all()
    hidden = ~obs
    assert ((x.mean(0) - m)[hidden].abs() <= 4 * se[hidden]).all(), (x.mean(0), m)
    assert (x.std(0)[hidden] > 0.05).all()  # a point estimate per noise draw, not one answer
    still = make_solver("red-diff", lam=0.0, steps=100)(y[:4], _four(pub), prior, seed=0).x
    assert torch.equal(still.flatten(1)[:, hidden], torch.zeros(4, int(hidden.sum())))


def _four(pub):
    import copy

    p = copy.copy(pub)
    p.params = {"mask": pub.params["mask"][:4]}
    return p


def _blind_prior(size=8):
    sched = VPSchedule.linear()
    d = size * size
    net = GaussianEps(torch.zeros(d, dtype=torch.float64), 0.3 * torch.eye(d, dtype=torch.float64),
                      (1, size, size), sched)
    return DiffusionPrior(net, sched, image_shape=(1, size, size), clip_denoised=False)


def test_blind_red_diff_fits_a_normalised_kernel_per_image():
    """Blind Gaussian blur (3x3 kernels) on bar images with an i.i.d. Gaussian prior (which does
    not prefer sharp images, so the blurred y with a delta kernel is as good an answer to it as the
    truth: kernel recovery needs an image prior, see the slow test). What must hold: the kernels
    are normalised and non-negative, the joint fit explains y to its noise level, and a batch
    gives each image's own result."""
    x = torch.full((3, 1, 8, 8), -0.8)
    x[0, :, 2:6, 3] = 0.9
    x[1, :, 4, 1:7] = 0.9
    x[2, :, 2:5, 2:5] = 0.7
    op = make_operator("blind-gaussian-blur", size=3)
    m = measure(x, op, "gaussian:0.01", seed=5)
    prior = _blind_prior()
    solver = make_solver("red-diff", blind=True, steps=300, lam=0.05)
    r = solver(m.y, m.public(), prior, seed=image_generators(0, range(3)))
    k = r.trace["kernel"]
    assert k.shape == (3, 3, 3) and torch.allclose(k.sum((1, 2)), torch.ones(3), atol=1e-5)
    assert (k >= 0).all()
    from diffinv.physics.blur import blur

    fit = blur(r.x, k, "circular")
    assert ((fit - m.y).flatten(1).pow(2).mean(1).sqrt() < 0.03).all()
    one = solver(m.y[1:2], m.public(), prior, seed=image_generators(0, [1]))
    assert torch.allclose(one.x, r.x[1:2], atol=1e-5)
    assert torch.allclose(one.trace["kernel"], k[1:2], atol=1e-6)


@pytest.mark.slow
def test_blind_red_diff_moves_the_kernel_towards_the_truth_with_the_fashion_prior():
    """With the shipped fashion32 prior (two validation images, blind motion blur, lam = 1): the
    estimated kernels are closer to the true ones than the initial random kernels, and the
    restorations beat the blurred y (~40 s on one CPU thread)."""
    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.metrics import get_metric
    from diffinv.metrics.kernels import kernel_mse

    prior = load_prior("fashion32")
    x = load_split("fashion32", "valid").images[:2]
    op = make_operator("blind-motion-blur")
    m = measure(x, op, "gaussian:0.02", 0, [0, 1], domain="fashion32")
    true = op._kernel(x, {**m.params, **m.true_params}).expand(2, -1, -1)
    r = make_solver("red-diff", blind=True, lam=1.0)(m.y, m.public(), prior, seed=0)
    init = make_solver("red-diff", blind=True, steps=1, lr=1e-12, kernel_lr=1e-12)(
        m.y, m.public(), prior, seed=0).trace["kernel"]
    assert (kernel_mse(r.trace["kernel"], true) < kernel_mse(init, true)).all()
    psnr = get_metric("psnr")
    assert (psnr(r.x, x) > psnr(m.y.clamp(-1, 1), x)).all()


def test_blind_rotation_angle_stays_in_its_range():
    x = torch.full((2, 1, 12, 12), -0.5)
    x[:, :, 5:7, 1:11] = 0.8
    m = measure(x, make_operator("blind-rotation-blur"), "gaussian:0.01", seed=1)
    r = make_solver("red-diff", blind=True, steps=20)(m.y, m.public(), _blind_prior(12), seed=0)
    lo, hi = make_operator("blind-rotation-blur").theta_range
    assert r.trace["theta"].shape == (2,)
    assert ((r.trace["theta"] >= lo) & (r.trace["theta"] <= hi)).all()


def test_bad_input_is_refused(gaussian_problem):
    prior, y, pub, *_ = _problem(gaussian_problem)
    with pytest.raises(DiffinvError, match="blind deblurring method"):
        make_solver("red-diff", blind=True)(y[:1], _one(pub), prior)
    m = measure(torch.zeros(1, 1, 8, 8), make_operator("blind-gaussian-blur", size=3),
                "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="blind"):
        make_solver("red-diff")(m.y, m.public(), _blind_prior())
    with pytest.raises(DiffinvError, match="weighting.*linear"):
        make_solver("red-diff", weighting="cubic")
    with pytest.raises(DiffinvError, match="kernel_size applies"):
        make_solver("red-diff", kernel_size=3)
    with pytest.raises(DiffinvError, match="lr"):
        make_solver("red-diff", lr=0.0)


def _one(pub):
    import copy

    p = copy.copy(pub)
    p.params = {"mask": pub.params["mask"][:1]}
    return p


def _offcentre_unknowns(boundary="circular"):
    """Blind motion-blur unknowns for two 8x8 images with 5x5 kernels (image 0's off its anchor:
    two pixels right and one down; image 1's centred)."""
    from diffinv.solvers._unknowns import blind_unknowns

    op = make_operator("blind-motion-blur", size=5, boundary=boundary)
    u = blind_unknowns(op, image_generators(0, range(2)), (2, 1, 8, 8), None, 0.1, 0.1,
                       torch.device("cpu"), torch.float64)
    logits = torch.full((2, 5, 5), -20.0, dtype=torch.float64)
    logits[0, 3, 4] = 0.0  # one down, two right of the anchor (2, 2) -> rolled by (-1, -2)
    logits[1, 1:4, 2] = 0.0  # centred
    u.leaves["kernel_logits"].data.copy_(logits.reshape(2, 25))
    return u


def test_recentring_keeps_the_data_term_and_moves_each_kernel_to_its_anchor():
    """``roll(k, s) * roll(x, -s) = k * x`` with a circular boundary: the fit is unchanged but for
    the kernel mass the roll wraps around its support, the off-centre kernel's centre of mass
    lands within half a pixel of the anchor, the centred one is left alone, and Adam's moments
    move with their parameters."""
    from diffinv.solvers._unknowns import recentre_kernels

    u = _offcentre_unknowns()
    image = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    image.requires_grad_(True)
    opt = torch.optim.Adam([image, u.leaves["kernel_logits"]], lr=1e-3)
    u.forward(image, u.estimates()).square().sum().backward()
    opt.step()
    before = u.forward(image, u.estimates()).detach()
    k0 = u.estimates()["kernel"][0].detach()
    wrapped = float(k0[:1].sum() + k0[1:, :2].sum())  # the entries the roll by (-1, -2) wraps around
    m_img = opt.state[image]["exp_avg"].clone()
    m_k = opt.state[u.leaves["kernel_logits"]]["exp_avg"].clone()
    shifts = recentre_kernels(u, image, opt)
    assert shifts.tolist() == [[-1, -2], [0, 0]]
    after = u.forward(image, u.estimates()).detach()
    # exact but for the kernel mass wrapped around its 5x5 support (~1e-8 here)
    assert (after - before).abs().max() <= 2 * wrapped * image.abs().max() + 1e-12
    k = u.estimates()["kernel"]
    idx = torch.arange(5, dtype=torch.float64)
    centre_y, centre_x = (k.sum(2) * idx).sum(1), (k.sum(1) * idx).sum(1)
    assert ((centre_y - 2).abs() <= 0.5).all() and ((centre_x - 2).abs() <= 0.5).all()
    torch.testing.assert_close(opt.state[image]["exp_avg"][0], torch.roll(m_img[0], (1, 2), (-2, -1)))
    torch.testing.assert_close(opt.state[image]["exp_avg"][1], m_img[1])
    torch.testing.assert_close(opt.state[u.leaves["kernel_logits"]]["exp_avg"][0].reshape(5, 5),
                               torch.roll(m_k[0].reshape(5, 5), (-1, -2), (0, 1)))


def test_blind_red_diff_with_recentring_ends_with_centred_kernels_and_counts_its_shifts():
    x = torch.full((2, 1, 8, 8), -0.8)
    x[0, :, 2:6, 3] = 0.9
    x[1, :, 4, 1:7] = 0.9
    m = measure(x, make_operator("blind-motion-blur", size=3), "gaussian:0.01", seed=5)
    r = make_solver("red-diff", blind=True, steps=60, lam=0.05, recentre=True)(
        m.y, m.public(), _blind_prior(), seed=image_generators(0, range(2)))
    k = r.trace["kernel"]
    idx = torch.arange(3, dtype=k.dtype)
    assert (((k.sum(2) * idx).sum(1) - 1).abs() <= 0.5).all()
    assert (((k.sum(1) * idx).sum(1) - 1).abs() <= 0.5).all()
    assert r.trace["recentre_shifts"].shape == (2,)
    assert "recentre_shifts" not in make_solver("red-diff", blind=True, steps=2)(
        m.y, m.public(), _blind_prior(), seed=0).trace


def test_recentring_is_refused_where_it_is_not_exact():
    x = torch.zeros(1, 1, 12, 12)
    for family, match in (("blind-rotation-blur", "Gaussian or motion"),):
        m = measure(x, make_operator(family), "gaussian:0.01", seed=0)
        with pytest.raises(DiffinvError, match=match):
            make_solver("red-diff", blind=True, recentre=True)(m.y, m.public(), _blind_prior(12))
    m = measure(x[..., :8, :8], make_operator("blind-motion-blur", size=3, boundary="zero"),
                "gaussian:0.01", seed=0)
    with pytest.raises(DiffinvError, match="circular"):
        make_solver("red-diff", blind=True, recentre=True)(m.y, m.public(), _blind_prior())
    with pytest.raises(DiffinvError, match="blind=true"):
        make_solver("red-diff", recentre=True)
    from diffinv.solvers._unknowns import recentre_kernels

    with pytest.raises(DiffinvError, match="circular"):
        recentre_kernels(_offcentre_unknowns("zero"), torch.zeros(2, 1, 8, 8), torch.optim.Adam(
            [torch.zeros(1, requires_grad=True)]))
