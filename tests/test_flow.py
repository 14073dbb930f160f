"""Flow-matching priors (issue 38): the CFM loss against the closed-form field of Gaussian data,
the restricted sources, the ODE samplers, DMPlug and PnP-Flow on flow priors, saving and loading
(with the source basis) and diffusers FlowMatchEulerDiscreteScheduler folders.

The closed form: data x_1 ~ N(m1, S1), source x_0 ~ N(m0, S0) independent, x_t = (1-t) x_0 + t x_1:
x_t ~ N(m_t, Sig_t), m_t = (1-t) m0 + t m1, Sig_t = (1-t)^2 S0 + t^2 S1, and
v*(x, t) = E[x_1 - x_0 | x_t = x] = (m1 - m0) + (t S1 - (1-t) S0) Sig_t^+ (x - m_t).
For commuting (diagonal) S0, S1 the ODE dx/dt = v* has the exact solution
x_1 = m1 + sqrt(S1 / S0) (x_0 - m0).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from diffinv.errors import DiffinvError, IntegrityError
from diffinv.flow import FlowPrior, Source, fit_source, time_grid
from diffinv.flow.training import flow_loss
from diffinv.physics import measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver

SHAPE = (1, 2, 2)
D = 4


class GaussianVelocity(nn.Module):
    """The exact velocity of Gaussian data N(m1, S1) from the source N(m0, S0); called as our
    networks are, with ``t * 1000``."""

    def __init__(self, m1, s1, m0=None, s0=None, wrong_time: bool = False):
        super().__init__()
        self.register_buffer("m1", m1.double())
        self.register_buffer("s1", s1.double())
        self.register_buffer("m0", torch.zeros(D, dtype=torch.float64) if m0 is None
                             else m0.double().reshape(-1))
        self.register_buffer("s0", torch.eye(D, dtype=torch.float64) if s0 is None else s0.double())
        self.wrong_time = wrong_time  # the field of the other time convention (t -> 1 - t)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t_scaled):
        b = x.shape[0]
        t = (t_scaled.double() / 1000).view(b, 1, 1)
        if self.wrong_time:
            t = 1 - t
        m0, m1, s0, s1 = (v.double() for v in (self.m0, self.m1, self.s0, self.s1))
        m_t = (1 - t[:, :, 0]) * m0 + t[:, :, 0] * m1
        sig = (1 - t) ** 2 * s0 + t ** 2 * s1
        cross = t * s1 - (1 - t) * s0
        r = x.reshape(b, D).double() - m_t
        v = (m1 - m0) + (cross @ torch.linalg.pinv(sig) @ r.unsqueeze(-1)).squeeze(-1)
        return v.reshape(x.shape).to(x.dtype)


def _data_gaussian(diagonal: bool = False):
    g = torch.Generator().manual_seed(0)
    m1 = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
    if diagonal:
        s1 = torch.diag(torch.tensor([0.04, 0.25, 0.5, 0.1], dtype=torch.float64))
    else:
        a = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.3
        s1 = a @ a.T + 0.05 * torch.eye(D, dtype=torch.float64)
    return m1, s1


def _draw_data(m1, s1, n, seed):
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(s1)
    return (m1 + torch.randn(n, D, generator=g, dtype=torch.float64) @ chol.T).reshape(n, *SHAPE)


class Shifted(nn.Module):
    """``base + e * delta(x, t)``."""

    def __init__(self, base, delta, e):
        super().__init__()
        self.base, self.delta, self.e = base, delta, e

    def forward(self, x, ts):
        return self.base(x, ts) + self.e * self.delta(x, ts / 1000)


# ----------------------------------------------------------------------------- the CFM loss
@pytest.mark.parametrize("source_kind", ["gaussian", "pca"])
def test_cfm_loss_is_minimised_by_the_closed_form_velocity(source_kind):
    """Along several directions delta, the loss L(v* + e delta) (the training function, on the
    same 200k draws) is a parabola in e whose vertex is e = 0 to within Monte-Carlo error; the
    field of the other time convention has a clearly higher loss."""
    m1, s1 = _data_gaussian()
    n = 200_000
    x1 = _draw_data(m1, s1, n, seed=1)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    z = torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)
    if source_kind == "gaussian":
        source, m0, s0 = Source(SHAPE), None, None
    else:  # a rank-2 restricted source fitted on data samples (mean and spread of the data)
        source = fit_source("pca", _draw_data(m1, s1, 5000, seed=3).float(), k=2, mean="data",
                            scale="data").double()
        m0, s0 = source.mean.reshape(-1), source.covariance()
    exact = GaussianVelocity(m1, s1, m0, s0)
    deltas = {"affine": lambda x, tt: x - 0.2, "constant": lambda x, tt: torch.ones_like(x),
              "time": lambda x, tt: (tt.view(-1, 1, 1, 1) - 0.5) * x}
    h = 0.2
    for name, delta in deltas.items():
        losses = [float(flow_loss(Shifted(exact, delta, e), source, x1, t, z)) for e in (-h, 0, h)]
        curvature = losses[0] - 2 * losses[1] + losses[2]
        vertex = h * (losses[0] - losses[2]) / (2 * curvature)
        assert curvature > 0 and abs(vertex) < 0.01, (name, vertex, losses)
    wrong = float(flow_loss(GaussianVelocity(m1, s1, m0, s0, wrong_time=True), source, x1, t, z))
    assert wrong > float(flow_loss(exact, source, x1, t, z)) + 0.05


# ----------------------------------------------------------------------------- the sources
def _pca_data(n=3000):
    """Images 1x4x4 (d = 16) with distinct variances along a random rotation."""
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    spread = torch.linspace(1.0, 0.05, 16, dtype=torch.float64)
    mean = torch.linspace(-0.3, 0.3, 16, dtype=torch.float64)
    x = mean + (torch.randn(n, 16, generator=g, dtype=torch.float64) * spread) @ q.T
    return x.reshape(n, 1, 4, 4).float()


@pytest.mark.parametrize("mean, scale", [("data", "data"), ("zero", "unit")])
def test_pca_source_lies_in_the_principal_subspace_with_the_stated_covariance(mean, scale):
    data = _pca_data()
    k = 5
    src = fit_source("pca", data, k=k, mean=mean, scale=scale)
    flat = data.reshape(len(data), -1).double()
    cov = torch.cov(flat.T)
    evals = torch.linalg.eigvalsh(cov).flip(0)
    u = src.basis.double()
    assert torch.allclose(u.T @ u, torch.eye(k, dtype=torch.float64), atol=1e-5)
    # the basis spans the top-k principal directions: it captures their variance exactly
    assert torch.allclose(torch.diagonal(u.T @ cov @ u), evals[:k].to(u.dtype), rtol=1e-3)
    x = src.sample(image_generators(0, range(20_000)))
    resid = (x - src.project(x)).abs().max()
    assert resid < 1e-5
    xf = x.reshape(len(x), -1).double()
    want_mean = flat.mean(0) if mean == "data" else torch.zeros(16, dtype=torch.float64)
    assert torch.allclose(xf.mean(0), want_mean, atol=0.03)
    want_cov = u @ torch.diag(evals[:k] if scale == "data" else torch.ones(k, dtype=torch.float64)
                              ) @ u.T
    assert torch.allclose(src.covariance(), want_cov, atol=1e-4)
    assert (torch.cov(xf.T) - want_cov).abs().max() < 0.05 * want_cov.abs().max()


def test_random_source_is_a_seeded_orthonormal_frame_and_the_control_of_pca():
    data = _pca_data()
    a = fit_source("random", data, k=4, seed=7)
    b = fit_source("random", None, k=4, seed=7, image_shape=(1, 4, 4))
    c = fit_source("random", None, k=4, seed=8, image_shape=(1, 4, 4))
    assert torch.equal(a.basis, b.basis) and not torch.allclose(a.basis, c.basis)
    assert torch.allclose(a.basis.T @ a.basis, torch.eye(4), atol=1e-5)
    d = fit_source("random", data, k=4, seed=7, scale="data")
    proj = (data.reshape(len(data), -1) - data.reshape(len(data), -1).mean(0)) @ d.basis
    assert torch.allclose(d.scales, proj.std(0), rtol=1e-3)
    assert a.card()["kind"] == "random" and a.card()["seed"] == 7


def test_source_options_are_checked():
    data = _pca_data(10)
    with pytest.raises(DiffinvError, match="at least k \\+ 1 = 11 training images"):
        fit_source("pca", data, k=10)
    with pytest.raises(DiffinvError, match="k in 1..16"):
        fit_source("pca", data, k=0)
    with pytest.raises(DiffinvError, match="flow source"):
        fit_source("sphere", data, k=2)


# ----------------------------------------------------------------------------- ODE solvers
def _closed_form_prior(diagonal=True, source=None):
    m1, s1 = _data_gaussian(diagonal)
    m0 = None if source is None else source.mean.reshape(-1)
    s0 = None if source is None else source.covariance()
    return FlowPrior(GaussianVelocity(m1, s1, m0, s0), source, image_shape=SHAPE), m1, s1


def test_euler_and_heun_converge_to_the_exact_flow_map_at_their_orders():
    prior, m1, s1 = _closed_form_prior()
    x0 = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = m1.view(1, *SHAPE) + torch.diagonal(s1).sqrt().view(1, *SHAPE) * x0
    err = {}
    for method in ("euler", "heun"):
        for n in (16, 32, 64, 128):
            x = prior.integrate(x0, time_grid(n), method)
            err[method, n] = float((x - exact).abs().max())
    for n in (16, 32, 64):
        assert 1.8 < err["euler", n] / err["euler", 2 * n] < 2.2  # first order
        assert 3.5 < err["heun", n] / err["heun", 2 * n] < 4.5  # second order
        assert err["heun", n] < err["euler", n] / 5
    gap = [float((prior.integrate(x0, time_grid(n), "euler")
                  - prior.integrate(x0, time_grid(n), "heun")).abs().max()) for n in (8, 64)]
    assert gap[1] < gap[0] / 6  # Euler -> Heun as the steps grow


def test_dopri5_reaches_the_exact_map():
    pytest.importorskip("torchdiffeq")
    prior, m1, s1 = _closed_form_prior()
    x0 = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = m1.view(1, *SHAPE) + torch.diagonal(s1).sqrt().view(1, *SHAPE) * x0
    x = prior.integrate_adaptive(x0, rtol=1e-7, atol=1e-7)
    assert (x - exact).abs().max() < 1e-5


def _tiny_flow_prior(source=None, size=8, seed=0):
    from diffinv.diffusion.unet import UNet

    torch.manual_seed(seed)
    net = UNet(1, size, base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
               attention_resolutions=[])
    with torch.no_grad():  # a non-zero output layer (it is zero-initialised)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return FlowPrior(net.eval(), source, image_shape=(1, size, size), name="tiny-flow")


def test_the_ode_map_is_deterministic_from_a_seed_and_batching_does_not_matter():
    prior = _tiny_flow_prior()
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(prior.seed_map(z, 3), prior.seed_map(z.clone(), 3))
    batch = prior.sample(3, seed=5, method="heun", steps=4)
    again = prior.sample(3, seed=5, method="heun", steps=4)
    one = torch.cat([prior.sample(1, seed=image_generators(5, [i]), method="heun", steps=4)
                     for i in range(3)])
    assert torch.equal(batch, again)
    assert torch.allclose(batch, one, atol=1e-5)
    assert not torch.allclose(batch, prior.sample(3, seed=6, method="heun", steps=4))


def test_restricted_source_seed_map_ignores_the_seed_outside_the_subspace():
    src = fit_source("random", None, k=6, seed=0, image_shape=(1, 8, 8))
    prior = _tiny_flow_prior(src)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    w_perp = w - (src.project(w) - src.mean)  # the component orthogonal to the subspace
    assert torch.allclose(prior.seed_map(z + w_perp, 2), prior.seed_map(z, 2), atol=1e-5)
    assert not torch.allclose(prior.seed_map(z + w, 2), prior.seed_map(z, 2), atol=1e-3)


# ----------------------------------------------------------------------------- solvers
def test_dmplug_runs_on_a_flow_prior_with_the_seed_entering_at_the_source():
    src = fit_source("random", None, k=16, seed=0, image_shape=(1, 8, 8))
    prior = _tiny_flow_prior(src)
    truth = prior.sample(2, seed=9, steps=4)
    m = measure(truth, "inpaint-random", "gaussian:0.05", seed=0)
    solver = make_solver("dmplug", iterations=6, steps=3, lr=0.05)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(solver.generate(prior, z), prior.seed_map(z, 3))
    res = solver(m.y, m.public(), prior, seed=0)
    assert res.x.shape == truth.shape and torch.isfinite(res.x).all()
    assert res.trace["timesteps"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    loss = res.trace["loss"]
    assert (loss[-1] < loss[0]).all()
    assert res.nfe == 6 * 3


def test_diffusion_only_solvers_refuse_a_flow_prior_by_name():
    prior = _tiny_flow_prior()
    truth = prior.sample(1, seed=0, steps=2)
    m = measure(truth, "inpaint-random", "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="flow-matching prior.*dmplug, pnp-flow"):
        make_solver("dps", steps=5)(m.y, m.public(), prior, seed=0)


def test_pnp_flow_fits_the_measurement_and_is_batch_independent():
    prior, m1, s1 = _closed_form_prior(diagonal=False)
    truth = _draw_data(m1, s1, 4, seed=5).float().clamp(-1, 1)
    m = measure(truth, "identity", "gaussian:0.05", seed=0)
    solver = make_solver("pnp-flow", steps=30, lr=1.0, alpha=0.5, draws=2)
    res = solver(m.y, m.public(), prior, seed=1)
    one = torch.cat([solver(m.y[i:i + 1], _one(truth, i), prior, seed=image_generators(1, [i])).x
                     for i in range(4)])
    assert torch.allclose(res.x, one, atol=1e-5)
    free = prior.sample(4, seed=1, steps=30)
    fit = (res.x - m.y).flatten(1).norm(dim=1)
    assert (fit < 0.5 * (free - m.y).flatten(1).norm(dim=1)).all()
    assert float((res.x - truth).flatten(1).norm(dim=1).mean()) < 0.3
    assert res.nfe == 30 * 2


def _one(truth, i):
    return measure(truth[i:i + 1], "identity", "gaussian:0.05", seed=0, indices=[i]).public()


def test_pnp_flow_refuses_a_diffusion_prior(gaussian_problem):
    from diffinv.diffusion.prior import DiffusionPrior

    _, _, schedule, net = gaussian_problem
    prior = DiffusionPrior(net, schedule, image_shape=SHAPE)
    m = measure(torch.zeros(1, *SHAPE), "identity", "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="pnp-flow' needs a flow-matching prior"):
        make_solver("pnp-flow", steps=2)(m.y, m.public(), prior, seed=0)


# ----------------------------------------------------------------------------- save and load
def _train(tmp_path, name, steps, max_steps=None, source=None):
    from diffinv.learn.trainer import TrainConfig, train_prior

    cfg = TrainConfig(out=str(tmp_path / name), steps=steps, batch=4, ckpt_every=1, log_every=1,
                      warmup=1, objective="flow",
                      source=source or {"kind": "pca", "k": 6, "mean": "data", "scale": "data"},
                      unet=dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
                                attention_resolutions=[]))
    data = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return train_prior(cfg, data=data, progress=False, max_steps_this_run=max_steps), data


def test_flow_training_resumes_exactly_and_round_trips_with_its_source(tmp_path):
    from diffinv import load_prior
    from diffinv.learn.checkpoint import load_checkpoint
    from diffinv.learn.trainer import export_prior

    straight, data = _train(tmp_path, "a", 3)
    _train(tmp_path, "b", 3, max_steps=2)
    resumed, _ = _train(tmp_path, "b", 3)
    sa, sb = load_checkpoint(straight), load_checkpoint(resumed)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    src = fit_source("pca", data, k=6, mean="data", scale="data")
    assert torch.allclose(sa["source"]["source.basis"], src.basis)

    path = export_prior(straight, tmp_path / "export", "toyflow")
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["objective"] == "flow" and card["prediction"] == "velocity"
    assert card["source"]["kind"] == "pca" and card["source"]["k"] == 6
    assert card["source"]["fitted_on"].startswith("fashion32:train")
    prior = load_prior(path)
    from_ckpt = load_prior(straight)
    assert isinstance(prior, FlowPrior) and isinstance(from_ckpt, FlowPrior)
    assert torch.equal(prior.source.basis, sa["source"]["source.basis"])
    assert torch.equal(prior.source.scales, src.scales)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.velocity(x, 0.3), from_ckpt.velocity(x, 0.3))
    assert torch.equal(prior.sample(2, seed=0, steps=3), from_ckpt.sample(2, seed=0, steps=3))

    card["source"]["k"] = 5  # a card that does not describe the stored basis
    card.pop("sha256")
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(IntegrityError, match="k = 5"):
        load_prior(path)


def test_full_gaussian_flow_export_stores_no_source_tensors(tmp_path):
    from safetensors.torch import load_file

    from diffinv import load_prior
    from diffinv.learn.trainer import export_prior

    ckpt, _ = _train(tmp_path, "g", 1, source={"kind": "gaussian"})
    path = export_prior(ckpt, tmp_path / "export", "g")
    assert not [k for k in load_file(str(path)) if k.startswith("source.")]
    prior = load_prior(path)
    assert prior.source.card()["kind"] == "gaussian"


def test_resuming_a_flow_run_with_another_source_is_refused(tmp_path):
    _train(tmp_path, "c", 2, max_steps=1)
    with pytest.raises(DiffinvError, match="another network/schedule/data set"):
        _train(tmp_path, "c", 2, source={"kind": "pca", "k": 4})


# ----------------------------------------------------------------------------- diffusers
def _flow_folder(tmp_path, **sched_kw):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                 layers_per_block=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=100, **sched_kw)
    folder = tmp_path / "flow-unet"
    unet.save_pretrained(folder / "unet")
    sched.save_pretrained(folder / "scheduler")
    return folder, unet.eval(), sched


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_diffusers_flow_match_folder_loads_as_a_flow_prior_and_steps_like_diffusers(tmp_path,
                                                                                   shift):
    from diffinv import load_prior

    folder, unet, sched = _flow_folder(tmp_path, shift=shift)
    prior = load_prior(folder)
    assert isinstance(prior, FlowPrior) and prior.image_shape == (1, 8, 8)
    assert prior.shift == shift and prior.source.card()["kind"] == "gaussian"
    sched.set_timesteps(6)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(unet(ref, t).sample, t, ref).prev_sample
        times = (1 - sched.sigmas).tolist()
        ours = prior.integrate(x, times, "euler")
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    s = prior.sample(2, seed=0, steps=4)
    assert s.shape == (2, 1, 8, 8) and torch.isfinite(s).all()


def test_diffusers_flow_folders_of_another_convention_or_scheduler_are_refused(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffinv import load_prior

    folder, _, _ = _flow_folder(tmp_path, invert_sigmas=True)
    with pytest.raises(DiffinvError, match="invert_sigmas"):
        load_prior(folder)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    diffusers.FlowMatchHeunDiscreteScheduler().save_pretrained(folder / "scheduler")
    with pytest.raises(DiffinvError, match="FlowMatchHeunDiscreteScheduler is not supported"):
        load_prior(folder)


def test_train_prior_cli_builds_the_source_config_and_refuses_stray_options():
    import argparse

    from diffinv.cli.train_prior import _source

    def ns(**kw):
        base = dict(objective="flow", source="gaussian", source_k=None, source_mean="zero",
                    source_scale="unit", source_seed=0)
        return argparse.Namespace(**{**base, **kw})

    assert _source(ns(source="pca", source_k=64, source_scale="data")) == {
        "kind": "pca", "k": 64, "mean": "zero", "scale": "data"}
    assert _source(ns(source="random", source_k=8, source_seed=3))["seed"] == 3
    assert _source(ns()) == {"kind": "gaussian"}
    with pytest.raises(DiffinvError, match="needs --source-k"):
        _source(ns(source="pca"))
    with pytest.raises(DiffinvError, match="--objective flow only"):
        _source(ns(objective="eps", source="pca", source_k=4))


def test_diffinv_sample_draws_from_a_flow_prior_with_an_ode_method(tmp_path, capsys):
    from diffinv.cli import main
    from diffinv.learn.trainer import export_prior

    ckpt, _ = _train(tmp_path, "s", 1, source={"kind": "random", "k": 8, "seed": 1})
    path = export_prior(ckpt, tmp_path / "export", "toyflow")
    out = tmp_path / "grid.png"
    assert main(["sample", "--prior", str(path), "-n", "3", "--steps", "2", "--method", "heun",
                 "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "--prior", str(path), "-n", "1", "--method", "ddpm",
                 "-o", str(tmp_path / "no.png")]) != 0
    assert "does not apply to a flow prior" in capsys.readouterr().err
