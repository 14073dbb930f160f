"""CL-DPS: the MoCo objective, the encoder file, the contrastive energy, the solver."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffinv.errors import DiffinvError, IntegrityError, ShapeError, UnknownNameError
from diffinv.learn.encoder import ContrastiveEncoder, EncoderConfig, load_encoder
from diffinv.learn.measurements import parse_families, random_measurements
from diffinv.learn.moco import (
    LikelihoodConfig,
    export_likelihood,
    info_nce,
    load_trained,
    momentum_update,
    retrieval_accuracy,
    train_likelihood,
)
from diffinv.seeding import image_generators

TINY = {"width": 8, "blocks": [1, 1, 1], "dim": 16, "intensity_head": True}


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ----------------------------------------------------------------------------------- objective
def test_info_nce_rows_pair_each_query_with_its_own_keys():
    """Row (i, j) holds q_i . k_ij and q_i's own negatives (the snapshot paired positive rows with
    other queries' negatives)."""
    B, J, K, d, tau = 3, 2, 5, 4, 0.5
    q, k, Q = _unit(B, d, seed=1), _unit(B, J, d, seed=2), _unit(K, d, seed=3)
    loss, logits = info_nce(q, k, Q, tau)
    assert logits.shape == (B, J, 1 + K)
    for i in range(B):
        for j in range(J):
            assert torch.allclose(logits[i, j, 0], q[i] @ k[i, j] / tau)
            assert torch.allclose(logits[i, j, 1:], Q @ q[i] / tau)
    manual = torch.stack([-(logits[i, j, 0] - torch.logsumexp(logits[i, j], 0))
                          for i in range(B) for j in range(J)]).mean()
    assert torch.allclose(loss, manual)


def test_info_nce_is_small_when_keys_match_and_negatives_do_not():
    d = 8
    q = torch.eye(d)[:2].double()
    k = q[:, None, :].expand(2, 3, d)
    Q = -q.repeat(4, 1)  # negatives opposite to both queries
    loss, _ = info_nce(q, k, Q, 0.07)
    # each row: positive at cos 1, four negatives at cos -1 and four at cos 0
    exact = math.log1p(4 * math.exp(-1 / 0.07) + 4 * math.exp(-2 / 0.07))
    assert math.isclose(loss.item(), exact, rel_tol=1e-9) and loss < 1e-5
    loss_swapped, _ = info_nce(q, k.flip(0), Q, 0.07)  # positives of the other query (cos 0)
    assert math.isclose(loss_swapped.item(), math.log(5 + 4 * math.exp(-1 / 0.07)), rel_tol=1e-9)


def test_momentum_update_is_the_convex_combination():
    a, b = ContrastiveEncoder(EncoderConfig(width=8, dim=8)), ContrastiveEncoder(
        EncoderConfig(width=8, dim=8))
    ka = [p.detach().clone() for p in a.parameters()]
    momentum_update(a, b, 0.9)
    for p_new, p_old, p_q in zip(a.parameters(), ka, b.parameters(), strict=True):
        assert torch.allclose(p_new, 0.9 * p_old + 0.1 * p_q, atol=1e-7)


# ------------------------------------------------------------------------------- measurements
def test_random_measurements_do_not_depend_on_the_batch():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fams = parse_families("motion,gaussian,rotation,zoom")
    y, names = random_measurements(x, fams, image_generators(5, range(4)))
    for i in range(4):
        yi, ni = random_measurements(x[i:i + 1], fams, image_generators(5, [i]))
        assert torch.equal(yi[0], y[i]) and ni[0] == names[i]
    assert not torch.allclose(y, x, atol=1e-3)


def test_unknown_family_is_refused():
    with pytest.raises(UnknownNameError, match="shear"):
        parse_families("motion,shear")


# ---------------------------------------------------------------------------------- training
def _data(n=16, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _cfg(out, **kw):
    return LikelihoodConfig(out=str(out), steps=4, batch=4, positives=2, queue=12, warmup=1,
                            ckpt_every=2, log_every=1, encoder=dict(TINY), **kw)


def test_training_resumes_bit_for_bit(tmp_path):
    data = _data()
    train_likelihood(_cfg(tmp_path / "a"), data=data, progress=False)
    train_likelihood(_cfg(tmp_path / "b"), data=data, progress=False, max_steps_this_run=2)
    train_likelihood(_cfg(tmp_path / "b"), data=data, progress=False)
    qa, ka, sa = load_trained(tmp_path / "a" / "checkpoint.pt")
    qb, kb, sb = load_trained(tmp_path / "b" / "checkpoint.pt")
    assert int(sa["step"]) == int(sb["step"]) == 4
    for pa, pb in zip(list(qa.parameters()) + list(ka.parameters()),
                      list(qb.parameters()) + list(kb.parameters()), strict=True):
        assert torch.equal(pa, pb)
    assert torch.equal(sa["queue"], sb["queue"])
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]


def test_training_improves_retrieval(tmp_path):
    """A short run on 256 images makes f_q(y) retrieve its own image among 32 of them far more
    often than the untrained encoders (chance 1/32). The queue is kept short so that it seldom
    holds a key of the query's own image (a false negative, frequent on so few images)."""
    data = _data(256, seed=1)
    cfg = LikelihoodConfig(out=str(tmp_path / "r"), steps=80, batch=32, positives=2, queue=32,
                           warmup=5, lr=0.05, momentum=0.9, ckpt_every=60, log_every=10,
                           families=("gaussian",), intensity_weight=0.0, key_abar_min=0.9,
                           encoder=dict(TINY, intensity_head=False))
    torch.manual_seed(cfg.seed)  # the initial weights of train_likelihood
    q0 = ContrastiveEncoder(cfg.encoder_config(1, 32)).eval()
    k0 = q0
    before = retrieval_accuracy(q0, k0, data[:32], ("gaussian",), seed=11)["acc"]
    train_likelihood(cfg, data=data, progress=False)
    q1, k1, _ = load_trained(tmp_path / "r" / "checkpoint.pt")
    after = retrieval_accuracy(q1, k1, data[:32], ("gaussian",), seed=11)["acc"]
    assert after >= before + 0.15, (before, after)


def test_resume_with_another_encoder_is_refused(tmp_path):
    data = _data()
    train_likelihood(_cfg(tmp_path / "a"), data=data, progress=False, max_steps_this_run=1)
    cfg = _cfg(tmp_path / "a")
    cfg.encoder = dict(TINY, width=16)
    with pytest.raises(DiffinvError, match="another encoder"):
        train_likelihood(cfg, data=data, progress=False)


# ------------------------------------------------------------------------------ encoder file
@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    train_likelihood(_cfg(d / "run"), data=_data(), progress=False)
    return export_likelihood(d / "run" / "checkpoint.pt", d / "toy.safetensors", valid=_data(10, 3),
                             command="test", prior="toy")


def test_encoder_file_round_trip(encoder_file):
    q, k, card = load_encoder(encoder_file)
    q2, k2, _ = load_trained(encoder_file.parent / "run" / "checkpoint.pt")
    x = _data(2, seed=4)
    assert torch.equal(q(x), q2(x)) and torch.equal(k(x), k2(x))
    assert card["prior"] == "toy" and card["steps"] == 4
    assert card["retrieval_valid"]["n"] == 10 and 0 <= card["retrieval_valid"]["acc"] <= 1


def test_truncated_and_foreign_encoder_files_are_refused(encoder_file, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(encoder_file.read_bytes()[:1000])
    with pytest.raises(IntegrityError, match="not a readable safetensors"):
        load_encoder(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(IntegrityError, match="not a diffinv contrastive encoder"):
        load_encoder(foreign)


# ------------------------------------------------------------------------------------ energy
def test_patches_tile_and_refuse_untileable_sizes():
    from diffinv.guidance.contrastive import to_patches

    u = torch.arange(48 * 48, dtype=torch.float32).reshape(1, 1, 48, 48)
    p = to_patches(u, 32, 8)
    assert p.shape == (1, 9, 1, 32, 32)
    assert torch.equal(p[0, 4, 0], u[0, 0, 8:40, 8:40])  # the centre patch, raster order
    assert torch.equal(p[0, 2, 0], u[0, 0, 0:32, 16:48])
    with pytest.raises(ShapeError, match="accepted sides: 32, 40, 48"):
        to_patches(torch.zeros(1, 1, 44, 44), 32, 8)


def test_energy_is_the_patch_mean_and_its_gradient_raises_the_similarity():
    from diffinv.guidance.contrastive import ContrastiveEnergy

    torch.manual_seed(0)
    q = ContrastiveEncoder(EncoderConfig(width=8, dim=16)).eval()
    k = ContrastiveEncoder(EncoderConfig(width=8, dim=16)).eval()
    y = _data(1, seed=1)[:, :, :, :].repeat(1, 1, 1, 1)
    y48 = F.pad(y, (8, 8, 8, 8), mode="circular")
    u48 = F.pad(_data(1, seed=2), (8, 8, 8, 8), mode="circular")
    e = ContrastiveEnergy(y48, q, k, tau=0.1)
    per_patch = [ContrastiveEnergy(y48[..., a:a + 32, b:b + 32], q, k, 0.1)(
        u48[..., a:a + 32, b:b + 32]) for a in (0, 8, 16) for b in (0, 8, 16)]
    assert torch.allclose(e(u48), torch.stack(per_patch).mean(0), atol=1e-5)
    u = u48.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(e(u).sum(), u)
    s0 = e.similarity(u48)
    s1 = e.similarity(u48 - 1e-3 * g / g.norm())
    assert s1 > s0


def test_energy_refuses_bad_settings():
    from diffinv.guidance.contrastive import ContrastiveEnergy

    q = ContrastiveEncoder(EncoderConfig(width=8, dim=16, intensity_head=False))
    with pytest.raises(DiffinvError, match="intensity head"):
        ContrastiveEnergy(_data(1), q, q, 0.07, intensity_weight=1.0)
    with pytest.raises(ShapeError, match="reads"):
        ContrastiveEnergy(torch.zeros(1, 3, 32, 32), q, q, 0.07)


# ---------------------------------------------------------------------------- DPM-Solver++
def _gaussian_flow(net, abar_T, abar_0, mu, sigma, x_T):
    """Closed-form probability-flow map of N(mu, Sigma) data from abar_T to abar_0 (per sample
    rows), then the exact Tweedie estimate at abar_0."""
    evals, evecs = torch.linalg.eigh(sigma)

    def c_half(ab, power):
        return evecs @ torch.diag((ab * evals + 1 - ab) ** power) @ evecs.T

    r = x_T.double().flatten(1) - abar_T ** 0.5 * mu
    x0_t = abar_0 ** 0.5 * mu + (c_half(abar_0, 0.5) @ c_half(abar_T, -0.5) @ r.T).T
    cov0 = abar_0 * sigma + (1 - abar_0) * torch.eye(len(mu), dtype=torch.float64)
    return mu + (abar_0 ** 0.5 * sigma @ torch.linalg.solve(cov0, (x0_t - abar_0 ** 0.5 * mu).T)).T


def _unconditional(sampler, steps, gaussian_problem, n=64, spacing="uniform"):
    from diffinv.diffusion import DiffusionPrior
    from diffinv.seeding import batch_generators, randn
    from diffinv.solvers.interleave import Interleaved

    mu, sigma, schedule, net = gaussian_problem

    class Plain(Interleaved):
        name = "plain"

        def unpack(self, y, physics, prior):
            from diffinv.solvers._common import Problem

            return Problem(None, {}, None, (y.shape[0], *prior.image_shape))

        def guide(self, ctx, step):
            return step.x_prev

    prior = DiffusionPrior(net, schedule, image_shape=(1, 2, 2), clip_denoised=False)
    y = torch.zeros(n, 1, 2, 2, dtype=torch.float64)
    out = Plain(steps, sampler, spacing=spacing)(y, None, prior, seed=0).x
    x_T = randn((1, 2, 2), batch_generators(0, n), dtype=torch.float64)
    ab = schedule.alpha_bar.double()
    exact = _gaussian_flow(net, float(ab[-1]), float(ab[0]), mu, sigma, x_T)
    return (out.flatten(1).double() - exact).abs().max().item()


def test_dpmpp2m_converges_to_the_exact_flow_at_second_order(gaussian_problem):
    """On Gaussian data the probability-flow ODE has a closed form. On log-SNR-spaced steps
    DPM-Solver++(2M)'s error falls ~4x when the steps double and ~6x for 2.5x the steps (second
    order); DDIM's ~2x (first order)."""
    e20, e40, e100 = (_unconditional("dpmpp2m", s, gaussian_problem, spacing="logsnr")
                      for s in (20, 40, 100))
    d20, d40 = (_unconditional("ddim", s, gaussian_problem, spacing="logsnr") for s in (20, 40))
    assert e100 < 3e-3, (e20, e40, e100)
    assert e20 / e40 > 3.0 and e40 / e100 > 5.0, (e20, e40, e100)
    assert 1.6 < d20 / d40 < 2.4, (d20, d40)
    assert e40 < d40 / 10


def test_logsnr_timesteps_are_uniform_in_log_snr():
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.solvers.interleave import logsnr_timesteps

    ab = VPSchedule.linear().alpha_bar.double()
    ts = logsnr_timesteps(ab, 20)
    assert ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    lam = 0.5 * torch.log(ab / (1 - ab))
    gaps = (lam[ts[1:]] - lam[ts[:-1]])[:-3]  # the grid is coarse in lambda near t = 0
    assert (gaps.max() - gaps.min()) / gaps.mean() < 0.08, gaps


# -------------------------------------------------------------------------------------- solver
@pytest.fixture(scope="module")
def toy_prior(tmp_path_factory):
    from conftest import make_tiny_prior
    from diffinv import load_prior

    return load_prior(str(make_tiny_prior(tmp_path_factory.mktemp("p"), name="toy")))


def _blind_measurement(n=2):
    from diffinv.physics import measure

    return measure(_data(n, seed=9), "blind-rotation-blur", "gaussian:0.02", seed=0)


def test_cl_dps_is_batch_independent_and_reproducible(toy_prior, encoder_file):
    from diffinv.solvers import make_solver

    m = _blind_measurement(2)
    for sampler, inp in (("dpmpp2m", "x0"), ("ddim", "xt")):
        s = make_solver("cl-dps", encoder=str(encoder_file), sampler=sampler, steps=5, scale=0.5,
                        input=inp)
        r = s(m.y, m.public(), toy_prior, seed=3)
        again = s(m.y, m.public(), toy_prior, seed=3)
        assert torch.equal(r.x, again.x)
        from diffinv.seeding import batch_generators

        gens = batch_generators(3, 2)
        one = s(m.y[1:], m.public(), toy_prior, seed=[gens[1]]).x
        assert torch.allclose(one[0], r.x[1], atol=1e-5)
        unguided = make_solver("cl-dps", encoder=str(encoder_file), sampler=sampler, steps=5,
                               scale=0.0, input=inp)(m.y, m.public(), toy_prior, seed=3).x
        assert not torch.allclose(unguided, r.x, atol=1e-4)
        assert r.trace["backward_nfe"] == (5 if inp == "x0" else 0)


def test_cl_dps_never_reads_the_operator(toy_prior, encoder_file):
    from diffinv.solvers import make_solver

    class NoOperator:
        def make_operator(self):
            raise AssertionError("CL-DPS built the operator")

        make_noise = make_operator
        blind = True

    m = _blind_measurement(1)
    r = make_solver("cl-dps", encoder=str(encoder_file), steps=3)(m.y, NoOperator(), toy_prior)
    assert torch.isfinite(r.x).all() and r.x.shape == m.y.shape


def test_cl_dps_refuses_mismatched_inputs(toy_prior, encoder_file, tmp_path):
    from diffinv.solvers import make_solver

    s = make_solver("cl-dps", encoder=str(encoder_file), steps=2)
    with pytest.raises(ShapeError, match="image's shape"):
        s(torch.zeros(1, 1, 8, 8), None, toy_prior)
    with pytest.raises(UnknownNameError):
        make_solver("cl-dps", input="y")

    class Other:
        name, image_shape = "mnist32", (1, 32, 32)

    from diffinv.guidance.contrastive import load_likelihood

    with pytest.raises(DiffinvError, match="trained for prior 'toy', not for 'mnist32'"):
        load_likelihood(str(encoder_file), Other())

    class Rgb:
        name, image_shape = "toy", (3, 32, 32)

    with pytest.raises(DiffinvError, match="1-channel"):
        load_likelihood(str(encoder_file), Rgb())


def test_shipped_encoder_matches_its_card():
    from diffinv.assets import sha256_file
    from diffinv.guidance.contrastive import embedded_encoders

    shipped = embedded_encoders()
    assert "fashion32" in shipped
    for path in shipped.values():
        card = json.loads(path.with_suffix(".json").read_text())
        assert card["sha256"] == sha256_file(path)
        assert card["retrieval_valid"]["acc"] > 10 * card["retrieval_valid"]["chance"]
        assert math.isfinite(card["wall_time_s"])


# --------------------------------------------------------------------------------- command line
@pytest.mark.assets
def test_cli_trains_exports_and_solves_a_blind_measurement(tmp_path):
    """`diffinv train-likelihood` (tiny, 3 steps) with --export, then `diffinv solve --solver cl-dps`
    on a saved blind rotation measurement with that encoder: the result equals a direct call."""
    from diffinv.cli import main
    from diffinv.errors import MissingAssetError

    try:
        from diffinv.data import load_split

        load_split("fashion32", "valid")
    except MissingAssetError as e:
        pytest.skip(f"fashion32 is not installed: {e}")
    enc = tmp_path / "enc"
    assert main(["train-likelihood", "--prior", "fashion32", "--out", str(tmp_path / "run"),
                 "--steps", "3", "--batch", "4", "--positives", "2", "--queue", "16",
                 "--width", "8", "--dim", "16", "--warmup", "1", "--no-progress",
                 "--export", str(enc)]) == 0
    card = json.loads((tmp_path / "enc.json").read_text())
    assert card["steps"] == 3 and card["retrieval_valid"]["n"] == 1000
    assert card["command"].startswith("diffinv train-likelihood")
    meas = tmp_path / "m"
    assert main(["measure", "--dataset", "fashion32:test:0-1", "--op", "blind-rotation-blur",
                 "--noise", "gaussian:0.02", "--seed", "3", "-o", str(meas)]) == 0
    out = tmp_path / "out"
    assert main(["solve", str(meas), "--solver", "cl-dps", "-p", f"encoder={enc}.safetensors",
                 "-p", "steps=3", "--no-progress", "-o", str(out)]) == 0
    from safetensors.torch import load_file

    from diffinv import load_prior
    from diffinv.physics import load_measurement
    from diffinv.solvers import make_solver

    m = load_measurement(meas)
    direct = make_solver("cl-dps", encoder=f"{enc}.safetensors", steps=3)(
        m.y, m.public(), load_prior("fashion32"), seed=0)
    assert torch.allclose(load_file(str(out / "result.safetensors"))["x"], direct.x, atol=1e-5)
    assert (out / "panel.png").is_file()
