"""DAVI: the PPB schedule, the IKL gradient, the alternating steps, training and the solver."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import DiffinvError
from diffinv.learn.davi_losses import ikl_loss, kl_schedule, snr_weight
from diffinv.learn.davi_ppb import PPBSchedule, lift_measurement
from diffinv.learn.davi_trainer import Davi, DaviConfig, export_davi, train_davi


# -- PPB schedule -------------------------------------------------------------------------------
def test_ppb_schedule_closed_forms():
    s = PPBSchedule(1000)
    assert torch.allclose(s.mu_x0 + s.mu_x1, torch.ones(1000, dtype=torch.float64))
    ramp = [(0.01 + (math.sqrt(0.02) - 0.01) * i / 999) ** 2 for i in range(1000)]
    sym = ramp[:500] + ramp[:500][::-1]
    assert float(s.sigma_f[999]) == pytest.approx(math.sqrt(sum(sym)), rel=1e-12)
    assert float(s.sigma_f[999]) == pytest.approx(1.481, abs=5e-4)  # methods.md 5.3
    assert float(s.sigma_f[0]) == pytest.approx(0.01) and float(s.sigma_b[999]) == pytest.approx(0.01)
    # the bridge betas are symmetric: sigma_b(a) = sigma_f(T - 1 - a)
    assert torch.allclose(s.sigma_b, s.sigma_f.flip(0))
    assert float(s.mu_x0[0]) == pytest.approx(sum(sym) / (sum(sym) + 1e-4), rel=1e-9)
    assert float(s.mu_x1[999]) == pytest.approx(sum(sym) / (sum(sym) + 1e-4), rel=1e-9)
    assert float(s.mu_x0[500]) == pytest.approx(0.50, abs=0.01)  # methods.md table
    h = 0.1
    ab = torch.cumprod(1 - torch.tensor(ramp, dtype=torch.float64), 0)
    std = s.perturb_std(torch.tensor([500, 750, 999]), h, torch.zeros(3, 1, 1, 1))
    assert torch.allclose(std.flatten().double(), (1 - ab[[500, 750, 999]]) * h, atol=1e-7)
    assert float(std[0]) == pytest.approx(0.067, abs=1e-3)
    a = s.draw_a(20000, torch.Generator().manual_seed(0))
    assert a.min() >= 0 and a.max() <= 999
    # floor(1000 Beta(3, 1) - 0.5): P(a >= 500) = 1 - 0.5005^3
    assert float((a >= 500).double().mean()) == pytest.approx(1 - 0.5005 ** 3, abs=0.01)


def test_kl_schedule_choice():
    lin = VPSchedule.linear()
    assert kl_schedule("linear", lin) is lin
    i2 = kl_schedule("i2sb", lin)
    assert float(i2.alpha_bar[399]) == pytest.approx(0.539, abs=1e-3)  # methods.md 5.7
    assert float(lin.alpha_bar[399]) == pytest.approx(0.195, abs=1e-3)
    t = torch.tensor([0, 399, 999])
    w = snr_weight(lin, t, torch.zeros(3, 1, 2, 2)).flatten().double()
    ab = lin.alpha_bar[t]
    assert torch.allclose(w, (ab.sqrt() / (1 - ab).sqrt()), rtol=1e-6)
    with pytest.raises(DiffinvError, match="KL schedule"):
        kl_schedule("cosine", lin)


# -- IKL gradient -------------------------------------------------------------------------------
def test_ikl_gradient_is_weighted_denoiser_difference():
    torch.manual_seed(0)
    gen = nn.Conv2d(1, 1, 3, padding=1)
    teacher, student = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)
    sched = VPSchedule.linear()
    z = torch.randn(4, 1, 6, 6)
    t = torch.tensor([10, 200, 399, 700])
    noise = torch.randn(4, 1, 6, 6)
    x_hat = gen(z)
    ab = sched.at(sched.alpha_bar, t, 4)
    x_t = ab.sqrt() * x_hat + (1 - ab).sqrt() * noise  # NOT detached: the stop-grad must act

    def den(net):
        return (x_t - (1 - ab).sqrt() * net(x_t)) / ab.sqrt()

    d_t, d_s = den(teacher), den(student)
    w = snr_weight(sched, t, x_hat)
    loss = ikl_loss(x_hat, d_s, d_t, w)
    got = torch.autograd.grad(loss, list(gen.parameters()), retain_graph=True)
    cot = (w * (d_s - d_t)).detach() / x_hat.numel()
    want = torch.autograd.grad(x_hat, list(gen.parameters()), grad_outputs=cot)
    for g1, g2 in zip(got, want, strict=True):
        assert torch.allclose(g1, g2, atol=1e-7, rtol=1e-5)
    assert any(g.abs().max() > 0 for g in got)


# -- training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import make_tiny_prior
    from diffinv.diffusion.zoo import load_prior

    d = tmp_path_factory.mktemp("davi")
    prior = load_prior(make_tiny_prior(d / "p0", size=16))
    prior.path = str(d / "p0" / "export" / "toy.safetensors")
    other = load_prior(make_tiny_prior(d / "p1", size=16, seed=1))
    g = torch.Generator().manual_seed(0)
    # +-1 patterns (4x4 blocks): far from tanh(y), so an untrained generator is inconsistent
    data = torch.sign(torch.rand(32, 1, 4, 4, generator=g) - 0.5).repeat_interleave(4, -1)
    return d, prior, other, data.repeat_interleave(4, -2)


def _cfg(out, **kw) -> DaviConfig:
    base = dict(prior="toy", task="gaussian-blur", out=str(out), steps=2, batch=4, ckpt_every=2,
                log_every=1)
    return DaviConfig(**{**base, **kw})


def _snapshot(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _changed(m: nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(m.parameters(), before, strict=True))


@pytest.mark.parametrize("gan", [False, True])
def test_alternating_steps_change_only_their_networks(tiny, gan):
    d, prior, _, data = tiny
    run = Davi(_cfg(d / "alt", gan=gan), prior, torch.device("cpu"))
    b = run.draw(data, 0)
    nets = ("generator", "student", "teacher") + (("disc",) if gan else ())
    snaps = {k: _snapshot(getattr(run, k)) for k in nets}
    ema = _snapshot(run.ema.model)
    run.student_step(b)
    assert _changed(run.student, snaps["student"])
    assert not _changed(run.generator, snaps["generator"])
    assert not _changed(run.teacher, snaps["teacher"])
    if gan:
        assert _changed(run.disc, snaps["disc"])
        snaps["disc"] = _snapshot(run.disc)
    snaps["student"] = _snapshot(run.student)
    logs = run.generator_step(b)
    assert _changed(run.generator, snaps["generator"])
    assert _changed(run.ema.model, ema)
    assert not _changed(run.student, snaps["student"])
    assert not _changed(run.teacher, snaps["teacher"])
    if gan:
        assert not _changed(run.disc, snaps["disc"])
        assert 0.01 <= logs["gan_weight"] <= 10


def test_generator_gradient_of_the_ikl_term(tiny):
    """With the other terms off, phase B's gradient is the VJP of w (D_psi - D_theta) / N."""
    d, prior, _, data = tiny
    run = Davi(_cfg(d / "g", weight_con=0.0, reg_coeff=0.0), prior, torch.device("cpu"))
    b = run.draw(data, 3)
    run.student_step(b)  # student != teacher
    loss, _ = run.generator_losses(b)
    params = list(run.generator.parameters())
    got = torch.autograd.grad(loss, params)
    x_hat = run.generator(run.bridge_input(b, 1), b.a[1])
    from diffinv.learn.davi_losses import denoise, q_sample

    t = b.t[1]
    x_t = q_sample(run.kl, x_hat.detach(), t, b.noise[1])
    with torch.no_grad():
        cot = snr_weight(run.kl, t, x_t) * (denoise(run.student, run.kl, x_t, t)
                                            - denoise(prior.network, prior.schedule, x_t, t))
    want = torch.autograd.grad(x_hat, params, grad_outputs=cot / x_hat.numel())
    for g1, g2 in zip(got, want, strict=True):
        assert torch.allclose(g1, g2, atol=1e-9, rtol=1e-4)


def _consistency(run: Davi, data: torch.Tensor) -> float:
    from diffinv.learn.davi_losses import consistency_loss

    vals = []
    for k in range(4):
        b = run.draw(data, 10_000 + k)
        with torch.no_grad():
            x = run.ema.model(run.ppb.sample(b.y_img, b.y_img, torch.full((4,), 999), 0.1,
                                             b.eps_h[1]), torch.full((4,), 999))
            vals.append(float(consistency_loss(run.op_name, run.operator, x, b.y, b.params)))
    return sum(vals) / len(vals)


def test_short_training_lowers_consistency_and_resumes(tiny):
    d, prior, _, data = tiny
    cfg = _cfg(d / "train", steps=40, lr=2e-3, s_lr=2e-3, ema_decay=0.5, weight_con=1.0,
               reg_coeff=0.0, bridge=False, ckpt_every=20, log_every=20)
    before = _consistency(Davi(cfg, prior, torch.device("cpu")), data)
    ckpt = train_davi(cfg, prior=prior, data=data, device="cpu", progress=False,
                      max_steps_this_run=20)
    ckpt = train_davi(cfg, prior=prior, data=data, device="cpu", progress=False)
    run = Davi(cfg, prior, torch.device("cpu"))
    from diffinv.learn.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    assert state["step"] == 40
    run.load_state_dict(state["davi"])
    after = _consistency(run, data)
    assert after < 0.5 * before, (before, after)
    # a resumed run equals an uninterrupted one (same batches, same updates)
    straight = train_davi(_cfg(d / "straight", **{k: getattr(cfg, k) for k in (
        "steps", "lr", "s_lr", "ema_decay", "weight_con", "reg_coeff", "bridge", "ckpt_every",
        "log_every")}), prior=prior, data=data, device="cpu", progress=False)
    s2 = load_checkpoint(straight)["davi"]["generator"]
    for k, v in state["davi"]["generator"].items():
        assert torch.allclose(v, s2[k], atol=1e-6), k


def test_resume_refuses_other_settings(tiny):
    d, prior, _, data = tiny
    train_davi(_cfg(d / "r"), prior=prior, data=data, device="cpu", progress=False)
    with pytest.raises(DiffinvError, match="t_ikl"):
        train_davi(_cfg(d / "r", t_ikl=10), prior=prior, data=data, device="cpu",
                   progress=False)


# -- the solver ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generator(tiny):
    d, prior, _, data = tiny
    ckpt = train_davi(_cfg(d / "ship", steps=3), prior=prior, data=data, device="cpu",
                      progress=False)
    return export_davi(ckpt, d / "gen", extra={"command": "test"})


def _measure(op, x, **kw):
    from diffinv.physics import measure

    return measure(x, op, "gaussian:0.05", seed=0, domain="toy", **kw)


def test_solver_batch_independent_and_seeded(tiny, generator):
    from diffinv.solvers import make_solver

    _, prior, _, data = tiny
    m = _measure("gaussian-blur", data[:3])
    solver = make_solver("davi", generator=str(generator))
    full = solver(m.y, m.public(), prior, seed=5)
    assert full.nfe == 1 and full.x.shape == (3, 1, 16, 16)
    ones = [solver(m.y[i:i + 1], m.public(), prior,
                   seed=[__import__("diffinv").seeding.image_generators(5, [i])[0]]).x
            for i in range(3)]
    assert torch.allclose(full.x, torch.cat(ones), atol=1e-5)
    again = solver(m.y, m.public(), prior, seed=5).x
    assert torch.equal(full.x, again)
    other = solver(m.y, m.public(), prior, seed=6).x
    assert not torch.allclose(full.x, other)
    # the output is x = tanh(x_in - sigma_f(999) net(x_in, 999)) with x_in = y + (1-abar) h eps
    from diffinv.seeding import image_generators, randn

    eps = randn((1, 16, 16), image_generators(5, range(3)))
    gen = solver._network(__import__("diffinv.solvers.davi", fromlist=["read_card"])
                          .read_card(generator), prior)
    x_in = m.y + (1 - gen.schedule.alpha_bar[999]).float() * 0.1 * eps
    want = torch.tanh(x_in - 1.4813 * gen.net(x_in, torch.full((3,), 999)))
    assert torch.allclose(full.x, want, atol=1e-3)


def test_solver_refuses_mismatched_generator(tiny, generator):
    from diffinv.solvers import make_solver

    _, prior, other, data = tiny
    solver = make_solver("davi", generator=str(generator))
    m = _measure("sr-avgpool", data[:2])
    with pytest.raises(DiffinvError, match="'gaussian-blur'.*'sr-avgpool'"):
        solver(m.y, m.public(), prior)
    m = _measure("gaussian-blur", data[:2])
    with pytest.raises(DiffinvError, match="prior"):
        solver(m.y, m.public(), other)
    from diffinv.physics import make_operator

    m = _measure(make_operator("gaussian-blur", std=2.0), data[:2])
    with pytest.raises(DiffinvError, match="settings"):
        solver(m.y, m.public(), prior)
    with pytest.raises(DiffinvError, match="no DAVI generator is shipped"):
        make_solver("davi")(m.y, m.public(), prior)


def test_lift_measurement():
    from diffinv.physics import make_operator

    x = torch.rand(2, 1, 8, 8) * 2 - 1
    sr = make_operator("sr-avgpool", factor=4)
    y = sr(x)
    pinv = lift_measurement("sr-avgpool", sr, y, {}, (1, 8, 8), "pinv")
    assert torch.allclose(sr(pinv), y, atol=1e-6)  # A A^+ = I
    assert torch.allclose(pinv, y.repeat_interleave(4, -1).repeat_interleave(4, -2))
    bil = lift_measurement("sr-avgpool", sr, y, {}, (1, 8, 8), "bilinear")
    assert bil.shape == x.shape
    box = make_operator("inpaint-box", box=4, margin=1)
    params = box.draw_params([torch.Generator().manual_seed(0)] * 2, (1, 8, 8))
    yb = box(x, **params) + 0.1
    assert torch.equal(lift_measurement("inpaint-box", box, yb, params, (1, 8, 8)),
                       params["mask"] * yb)
    with pytest.raises(DiffinvError, match="phase-retrieval"):
        lift_measurement("phase-retrieval", None, y, {}, (1, 8, 8))


def test_cli_solve_with_davi_and_train_davi_help(tiny, generator, tmp_path, capsys):
    import json

    from diffinv.cli import main
    from diffinv.physics import save_measurement

    _, prior, _, data = tiny
    save_measurement(_measure("gaussian-blur", data[:2]), tmp_path / "m")
    code = main(["solve", str(tmp_path / "m"), "--solver", "davi", "--prior", prior.path,
                 "-p", f"generator={generator}", "--preset", "none", "-o", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 0
    info = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert info["nfe"] == 1 and len(info["psnr"]) == 2
    save_measurement(_measure("inpaint-random", data[:2]), tmp_path / "m2")
    code = main(["solve", str(tmp_path / "m2"), "--solver", "davi", "--prior", prior.path,
                 "-p", f"generator={generator}", "-o", str(tmp_path / "o2")])
    assert code == 1 and "'gaussian-blur'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train-davi", "--help"])
    assert e.value.code == 0 and "--kl-schedule" in capsys.readouterr().out


def test_kl_branch_uses_the_teachers_schedule_unless_official(tiny):
    d, prior, _, _ = tiny
    assert Davi(_cfg(d / "k1"), prior, torch.device("cpu")).kl is prior.schedule
    official = Davi(_cfg(d / "k2", kl_schedule="i2sb"), prior, torch.device("cpu")).kl
    assert float(official.alpha_bar[399]) == pytest.approx(0.539, abs=1e-3)
    with pytest.raises(DiffinvError, match="KL schedule"):
        DaviConfig(kl_schedule="cosine").resolved()
