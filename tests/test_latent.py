"""Latent priors (encode / decode / latent diffusion), the KL autoencoder and its training, the
diffusers latent folders, and the latent solvers (resample, psld, latent-dps, latentdem) on tiny
random latent priors."""

from __future__ import annotations

import json

import pytest
import torch

from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.unet import UNet
from diffinv.errors import DiffinvError, ShapeError
from diffinv.flow.prior import MissingCapabilityError
from diffinv.latent import LatentPrior, require_latent
from diffinv.latent.autoencoder import KLAutoencoder, autoencoder_loss, kl_divergence
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers.resample import (
    ReSample,
    optimise,
    resample_sigma2,
    stochastic_resample,
)

SIZE = 16  # images 1x16x16 -> latents 4x8x8 (f = 2: one downsampling)


def tiny_latent_prior(seed: int = 0) -> LatentPrior:
    torch.manual_seed(seed)
    ae = KLAutoencoder(in_channels=1, image_size=SIZE, latent_channels=4, base_channels=8,
                       channel_mults=(1, 2))
    net = UNet(in_channels=4, image_size=8, base_channels=8, channel_mults=[1, 2],
               num_res_blocks=1, attention_resolutions=[])
    torch.nn.init.normal_(net.head[-1].weight, std=0.02)  # a non-zero eps
    latent = DiffusionPrior(net, VPSchedule.linear(), image_shape=(4, 8, 8), name="toy-latent")
    return LatentPrior(ae, latent, scale_factor=1.5, name="toy-latent")


def pixel_prior() -> DiffusionPrior:
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=SIZE, base_channels=8, channel_mults=[1, 2],
               num_res_blocks=1, attention_resolutions=[])
    return DiffusionPrior(net, VPSchedule.linear(), image_shape=(1, SIZE, SIZE), name="toy-pixel")


def images(n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (torch.rand(n, 1, SIZE, SIZE, generator=g) * 1.6 - 0.8)


# ------------------------------------------------------------------------ resampling formula
def test_stochastic_resampling_is_the_posterior_of_its_two_gaussians():
    """z ~ N(sqrt(abar) z0_y, (1 - abar) I) (the forward diffusion of the consistent latent) and
    z' | z ~ N(z, sigma^2 I): the posterior of z is Gaussian with precision 1/(1 - abar) +
    1/sigma^2 and mean (sqrt(abar) z0_y / (1 - abar) + z' / sigma^2) / precision."""
    g = torch.Generator().manual_seed(0)
    z0_y, z_prime = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    a_t, a_prev, gamma = 0.3, 0.45, 40.0
    s2 = resample_sigma2(gamma, a_t, a_prev)
    assert s2 == pytest.approx(gamma * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    prec = 1 / (1 - a_prev) + 1 / s2
    mean = (a_prev ** 0.5 * z0_y / (1 - a_prev) + z_prime / s2) / prec
    got_mean = stochastic_resample(z0_y, z_prime, a_prev, s2, None)
    assert torch.allclose(got_mean, mean, atol=1e-6)
    unit = torch.ones_like(z0_y)
    got_std = stochastic_resample(z0_y, z_prime, a_prev, s2, unit) - got_mean
    assert torch.allclose(got_std, torch.full_like(z0_y, (1 / prec) ** 0.5), atol=1e-6)
    # the limits: sigma -> 0 trusts z', the clean end gives the consistent latent itself
    assert torch.allclose(stochastic_resample(z0_y, z_prime, a_prev, 1e-12, None), z_prime,
                          atol=1e-5)
    assert torch.equal(stochastic_resample(z0_y, z_prime, 1.0, 0.0, unit), z0_y)


# ------------------------------------------------------------------ hard data consistency
def test_hard_consistency_reduces_the_residual_image_by_image():
    lp = tiny_latent_prior()
    truth = images(2)
    m = measure(truth, "inpaint-random", "gaussian:0.01", seed=0)
    from diffinv.solvers._common import unpack

    solver = ReSample(steps=3, pixel_iters=300, latent_iters=60, patience=20)
    problem = unpack(solver, m.y, m.public(), lp)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def resid(z):
        with torch.no_grad():
            return (m.y - problem.operator(lp.decode(z), **problem.params)).flatten(1).norm(dim=1)

    before = resid(z0)
    z_lat, _ = solver.latent_step(lp, problem, m.y, z0)
    assert (resid(z_lat) < 0.9 * before).all()
    with torch.no_grad():
        x0 = lp.decode(z0)
    z_pix, _ = solver.pixel_step(lp, problem, m.y, z0)
    # the pixel solve itself fits y (then re-encoding moves it by the autoencoder's error)
    from diffinv.solvers.resample import mse_per_image
    x_fit, _ = optimise(x0, lambda v: mse_per_image(m.y, problem.operator(v, **problem.params)),
                        lr=1e-2, iters=300)
    fit = (m.y - problem.operator(x_fit, **problem.params)).flatten(1).norm(dim=1)
    assert (fit < 0.2 * (m.y - problem.operator(x0, **problem.params)).flatten(1).norm(dim=1)).all()
    assert z_pix.shape == z0.shape and torch.isfinite(z_pix).all()


def test_optimisation_stops_image_by_image_and_batching_does_not_matter():
    target = torch.tensor([[0.0], [5.0]])

    def loss(v):
        return (v - target[: v.shape[0]]).pow(2).sum(1)

    both, stops = optimise(torch.zeros(2, 1), loss, lr=0.1, iters=300, tol=1e-6)
    assert stops[0] == 0 and stops[1] > 0  # the first image starts at its optimum
    assert both[0].item() == 0.0
    alone, _ = optimise(torch.zeros(1, 1) , lambda v: (v - 5.0).pow(2).sum(1), lr=0.1,
                        iters=300, tol=1e-6)
    assert torch.allclose(both[1], alone[0])
    # patience: a loss that rises above its value `patience` iterations earlier stops it
    seq = iter([3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    _, stops = optimise(torch.zeros(1, 1), lambda v: v.sum(1) * 0 + next(seq), lr=0.1, iters=8,
                        patience=2)
    assert stops == [4]


# ------------------------------------------------------------------------- the contract
def test_encode_decode_shapes_and_clear_errors_on_images_of_the_wrong_size():
    lp = tiny_latent_prior()
    x = images(2)
    z = lp.encode(x)
    assert z.shape == (2, 4, 8, 8) and lp.latent_shape == (4, 8, 8)
    assert torch.allclose(z, lp.autoencoder.encode(x) * 1.5)
    assert lp.decode(z).shape == (2, 1, 16, 16)
    with pytest.raises(ShapeError, match=r"not a batch of 1x16x16 images.*resize or crop"):
        lp.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ShapeError, match="not a batch of 4x8x8 latents"):
        lp.decode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ShapeError, match="1x16x16 images"):
        lp.autoencoder.encode(torch.zeros(1, 3, 16, 16))
    s = lp.sample(2, seed=0, steps=3)
    assert s.shape == (2, 1, 16, 16) and s.abs().max() <= 1
    from diffinv.resources import sample_bytes

    assert sample_bytes(lp, 2) > 0  # what `diffinv sample` checks first


def test_kl_autoencoder_loss_parts():
    torch.manual_seed(0)
    ae = KLAutoencoder(in_channels=1, image_size=SIZE, base_channels=8, channel_mults=(1, 2))
    mu, logvar = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    assert kl_divergence(mu, logvar).item() == 0.0
    assert kl_divergence(mu + 1, logvar).item() == pytest.approx(0.5 * 256)
    loss, parts = autoencoder_loss(ae, images(2), torch.zeros(2, 4, 8, 8), kl_weight=0.0)
    assert loss.item() == pytest.approx(parts["rec"], rel=1e-6)


# -------------------------------------------------------------------------- refusals
def test_latent_solvers_refuse_a_pixel_prior_and_pixel_solvers_a_latent_prior():
    truth = images(1)
    m = measure(truth, "inpaint-random", "gaussian:0.01", seed=0)
    for name in ("resample", "psld", "latent-dps"):
        with pytest.raises(MissingCapabilityError,
                           match=f"solver '{name}' needs a latent prior.*'toy-pixel' is a "
                                 "pixel-space diffusion prior"):
            make_solver(name, steps=2)(m.y, m.public(), pixel_prior(), seed=0)
    mb = measure(truth, make_operator("blind-motion-blur"), "gaussian:0.02", seed=0)
    with pytest.raises(MissingCapabilityError, match="'latentdem' needs a latent prior"):
        make_solver("latentdem", steps=2)(mb.y, mb.public(), pixel_prior(), seed=0)
    with pytest.raises(MissingCapabilityError,
                       match="latent diffusion prior.*resample, psld, latent-dps, latentdem"):
        make_solver("dps", steps=2)(m.y, m.public(), tiny_latent_prior(), seed=0)
    with pytest.raises(MissingCapabilityError, match="'psld' needs a latent prior"):
        require_latent("psld", object())


# -------------------------------------------------------------------------- solvers
@pytest.mark.parametrize("name,params", [
    ("resample", dict(steps=6, pixel_iters=20, latent_iters=10, patience=5)),
    ("psld", dict(steps=4)),
    ("latent-dps", dict(steps=4)),
])
def test_latent_solvers_run_on_a_tiny_latent_prior_batch_independently(name, params):
    lp = tiny_latent_prior()
    truth = images(2)
    m = measure(truth, "inpaint-random", "gaussian:0.01", seed=0)
    solver = make_solver(name, **params)
    res = solver(m.y, m.public(), lp, seed=1)
    assert res.x.shape == truth.shape and torch.isfinite(res.x).all()
    assert res.x.abs().max() <= 1
    assert res.nfe >= params["steps"] and res.trace["backward_nfe"] == params["steps"]
    one = solver(m.y[1:], measure(truth[1:], "inpaint-random", "gaussian:0.01", seed=0,
                                  indices=[1]).public(), lp, seed=image_generators(1, [1])).x
    assert torch.allclose(res.x[1:], one, atol=1e-5)
    if name == "resample":
        kinds = [d["kind"] for d in res.trace["hard_dc"]]
        # 6 steps: every = 1, third = 2; indices 4, 3, 2 are the middle third, 1 and 0 the last
        assert kinds == ["pixel"] * 3 + ["latent"] * 2, kinds


def test_psld_needs_a_linear_operator():
    lp = tiny_latent_prior()
    m = measure(images(1), "phase-retrieval", "gaussian:0.01", seed=0)
    with pytest.raises(DiffinvError, match="psld' needs a linear operator"):
        make_solver("psld", steps=2)(m.y, m.public(), lp, seed=0)


def test_latentdem_runs_blind_and_returns_a_normalised_kernel():
    lp = tiny_latent_prior()
    m = measure(images(1), make_operator("blind-motion-blur"), "gaussian:0.02", seed=0)
    res = make_solver("latentdem", steps=4, hqs_iterations=3)(m.y, m.public(), lp, seed=0)
    k = res.trace["kernel"]
    assert k.shape == (1, 9, 9) and torch.allclose(k.sum((1, 2)), torch.ones(1), atol=1e-5)
    assert (k >= 0).all() and torch.isfinite(res.x).all()
    with pytest.raises(DiffinvError, match="blind deblurring method"):
        mi = measure(images(1), "inpaint-random", "gaussian:0.01", seed=0)
        make_solver("latentdem", steps=2)(mi.y, mi.public(), lp, seed=0)


def test_latentdem_scale_rises_over_the_first_40_percent():
    from diffinv.solvers.latentdem import latentdem_scale

    assert latentdem_scale(0, 100) == pytest.approx(0.1)
    assert latentdem_scale(20, 100) == pytest.approx(0.1 * 8 ** 0.5)
    assert latentdem_scale(40, 100) == pytest.approx(0.8)
    assert latentdem_scale(90, 100) == pytest.approx(0.8)
    assert latentdem_scale(20, 100, anneal="linear") == pytest.approx(0.45)


# -------------------------------------------------------------------------- diffusers
def _diffusers_latent_folder(tmp_path, safe=True):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2,
                                  block_out_channels=(8, 8), layers_per_block=1,
                                  norm_num_groups=4, sample_size=SIZE, scaling_factor=0.5)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4,
                                 layers_per_block=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    folder = tmp_path / "ldm"
    vae.save_pretrained(folder / "vae", safe_serialization=safe)
    unet.save_pretrained(folder / "unet")
    sched.save_pretrained(folder / "scheduler")
    return folder, vae.eval()


def test_diffusers_latent_folder_loads_as_a_latent_prior_and_samples(tmp_path):
    from diffinv import load_prior

    folder, vae = _diffusers_latent_folder(tmp_path)
    lp = load_prior(folder)
    assert isinstance(lp, LatentPrior) and lp.image_shape == (1, SIZE, SIZE)
    assert lp.latent_shape == (4, 8, 8) and lp.scale_factor == 0.5
    assert not lp.latent.clip_denoised
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(lp.encode(x), 0.5 * vae.encode(x).latent_dist.mean, atol=1e-6)
        z = torch.randn(2, 4, 8, 8)
        assert torch.allclose(lp.decode(z), vae.decode(z / 0.5).sample, atol=1e-6)
    s = lp.sample(2, seed=0, steps=3)
    assert s.shape == (2, 1, SIZE, SIZE) and torch.isfinite(s).all()
    m = measure(x[:1], "inpaint-random", "gaussian:0.01", seed=0)
    res = make_solver("latent-dps", steps=2)(m.y, m.public(), lp, seed=0)
    assert res.x.shape == (1, 1, SIZE, SIZE)


def test_a_pickled_diffusers_vae_is_refused(tmp_path):
    from diffinv import load_prior

    folder, _ = _diffusers_latent_folder(tmp_path, safe=False)
    with pytest.raises(DiffinvError, match="a pickle"):
        load_prior(folder)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"])
def test_a_malformed_vae_config_is_a_clear_integrity_error(tmp_path, text):
    from diffinv import load_prior
    from diffinv.errors import IntegrityError

    folder, _ = _diffusers_latent_folder(tmp_path)
    (folder / "vae" / "config.json").write_text(text)
    with pytest.raises(IntegrityError, match="config.json"):
        load_prior(folder)


# -------------------------------------------------------------------------- training
def test_autoencoder_training_resumes_exactly_and_exports_a_latent_prior(tmp_path):
    from diffinv import load_prior
    from diffinv.latent.training import (
        AutoencoderConfig,
        encode_dataset,
        export_autoencoder,
        export_latent_prior,
        load_autoencoder,
        train_autoencoder,
    )
    from diffinv.learn.checkpoint import load_checkpoint
    from diffinv.learn.trainer import TrainConfig, train_prior

    data = images(12)
    ae_cfg = dict(latent_channels=4, base_channels=8, channel_mults=[1, 2], blocks=1)

    def cfg(name):
        return AutoencoderConfig(out=str(tmp_path / name), steps=4, batch=4, ckpt_every=4,
                                 log_every=2, warmup=1, scale_images=8, autoencoder=ae_cfg)

    straight = train_autoencoder(cfg("a"), data=data, progress=False)
    train_autoencoder(cfg("b"), data=data, progress=False, max_steps_this_run=2)
    resumed = train_autoencoder(cfg("b"), data=data, progress=False)
    sa, sb = load_checkpoint(straight), load_checkpoint(resumed)
    for k, v in sa["ema"]["model"].items():
        assert torch.equal(v, sb["ema"]["model"][k]), k
    ae_path = export_autoencoder(straight, tmp_path / "export", "ae")
    ae, card = load_autoencoder(ae_path)
    assert card["scale_factor"] > 0 and ae.latent_shape == (4, 8, 8)
    lat = encode_dataset(ae, data, card["scale_factor"])
    assert lat.shape == (12, 4, 8, 8)
    pcfg = TrainConfig(out=str(tmp_path / "ldm"), steps=2, batch=4, ckpt_every=2, log_every=2,
                       warmup=1, unet=dict(base_channels=8, channel_mults=[1, 2],
                                           num_res_blocks=1, attention_resolutions=[]))
    ckpt = train_prior(pcfg, data=lat, progress=False)
    path = export_latent_prior(ckpt, ae_path, tmp_path / "prior", "toy-ldm")
    lp = load_prior(path)
    assert isinstance(lp, LatentPrior) and lp.image_shape == (1, SIZE, SIZE)
    assert lp.scale_factor == pytest.approx(card["scale_factor"])
    assert lp.sample(1, seed=0, steps=2).shape == (1, 1, SIZE, SIZE)


def test_tweedie_of_the_code_uses_one_minus_abar():
    from diffinv.solvers._latent import tweedie

    lp = tiny_latent_prior()
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    a = float(lp.latent.schedule.alpha_bar[500])
    assert torch.allclose(tweedie(lp.latent, z, 500, eps), (z - (1 - a) ** 0.5 * eps) / a ** 0.5)
    assert torch.allclose(tweedie(lp.latent, z, 500, eps, "code"), (z - (1 - a) * eps) / a ** 0.5)
    with pytest.raises(DiffinvError, match="tweedie must be one of"):
        make_solver("resample", tweedie="sqrt")


def test_cli_trains_an_autoencoder_then_a_latent_prior_that_loads(tmp_path, capsys):
    from diffinv import load_prior
    from diffinv.cli import main

    assert main(["train-autoencoder", "--dataset", "fashion32", "--out", str(tmp_path / "ae"),
                 "--steps", "1", "--batch", "2", "--warmup", "1", "--train-images", "8",
                 "--base", "8", "--mults", "1,2,2", "--no-progress", "--device", "cpu",
                 "--export", str(tmp_path / "x"), "--name", "ae"]) == 0
    assert main(["train-prior", "--dataset", "fashion32", "--out", str(tmp_path / "ldm"),
                 "--latent", str(tmp_path / "x" / "ae.safetensors"), "--steps", "1",
                 "--batch", "2", "--warmup", "1", "--train-images", "8", "--base-channels", "8",
                 "--channel-mults", "1,2", "--attention", "", "--num-res-blocks", "1",
                 "--no-progress", "--device", "cpu", "--export", str(tmp_path / "p")]) == 0
    lp = load_prior(tmp_path / "p" / "fashion32-latent.safetensors")
    assert isinstance(lp, LatentPrior) and lp.image_shape == (1, 32, 32)
    assert lp.latent_shape == (4, 8, 8) and lp.domain == "fashion32"
    # both cards record the subset (--train-images 8) as the pixel and flow trainers' cards do
    for card in (tmp_path / "x" / "ae.json", tmp_path / "p" / "fashion32-latent.json",
                 tmp_path / "p" / "fashion32-latent-autoencoder.json"):
        c = json.loads(card.read_text())
        assert (c["trained_on"], c["train_images"]) == ("fashion32:train[:8]", 8), card.name
    capsys.readouterr()


def test_a_run_stopped_before_its_last_step_is_not_exported(tmp_path, capsys):
    """--export writes the model when the run is done, never a half-trained one (a run stopped
    by --max-steps-this-run here; a signal stop takes the same path); the rerun exports."""
    from diffinv.cli import main

    argv = ["train-autoencoder", "--dataset", "fashion32", "--out", str(tmp_path / "ae"),
            "--steps", "3", "--batch", "2", "--warmup", "1", "--train-images", "8", "--base", "8",
            "--mults", "1,2", "--no-progress", "--device", "cpu", "--export", str(tmp_path / "x"),
            "--name", "ae"]
    assert main(argv + ["--max-steps-this-run", "2"]) == 0
    assert "stopped at step 2 of 3: not exported" in capsys.readouterr().out
    assert not (tmp_path / "x" / "ae.safetensors").exists()
    assert main(argv) == 0
    assert "exported:" in capsys.readouterr().out
    assert json.loads((tmp_path / "x" / "ae.json").read_text())["steps"] == 3


# ------------------------------------------------------------------------ reconstruction ceiling
class _OffsetRoundTrip(torch.nn.Module):
    """D(E(x)) = x + offset, clamped by reconstruct(): a known PSNR."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(offset), requires_grad=False)

    def encode(self, x):
        return x * 2.0

    def decode(self, z):
        return z / 2.0 + self.offset


def test_reconstruction_psnr_matches_its_closed_form_and_batching_does_not_matter():
    from diffinv.latent.evaluate import reconstruct, reconstruction_scores

    x = images(5) * 0.5  # |x| <= 0.4: x + 0.1 stays inside [-1, 1]
    s = reconstruction_scores(_OffsetRoundTrip(0.1), x, batch=2)
    # an offset 0.1 on [-1, 1] is 0.05 on the [0, 1] frame: PSNR = 10 log10(1 / 0.05^2)
    assert torch.allclose(s["psnr"], torch.full((5,), 26.0206), atol=1e-3)
    assert torch.equal(reconstruct(_OffsetRoundTrip(0.1), x, batch=2),
                       reconstruct(_OffsetRoundTrip(0.1), x, batch=5))
    assert torch.all(reconstruct(_OffsetRoundTrip(5.0), x) <= 1.0)  # clamped to the image range
    with pytest.raises(ShapeError):
        reconstruct(_OffsetRoundTrip(0.1), x[0])


def test_autoencoder_from_checkpoint_is_the_exported_model(tmp_path):
    from diffinv.errors import IntegrityError
    from diffinv.latent.evaluate import autoencoder_from_checkpoint, reconstruct
    from diffinv.latent.training import (
        AutoencoderConfig,
        export_autoencoder,
        load_autoencoder,
        train_autoencoder,
    )

    data = images(8)
    cfg = AutoencoderConfig(out=str(tmp_path / "a"), steps=3, batch=4, ckpt_every=3, log_every=1,
                            warmup=1, scale_images=8,
                            autoencoder=dict(latent_channels=4, base_channels=8,
                                             channel_mults=[1, 2], blocks=1))
    ckpt = train_autoencoder(cfg, data=data, progress=False)
    from_ckpt, info = autoencoder_from_checkpoint(ckpt)
    exported, _ = load_autoencoder(export_autoencoder(ckpt, tmp_path / "e", "ae"))
    assert info["step"] == 3
    assert torch.equal(reconstruct(from_ckpt, data), reconstruct(exported, data))
    raw, _ = autoencoder_from_checkpoint(ckpt, use_ema=False)
    assert not torch.equal(reconstruct(raw, data), reconstruct(from_ckpt, data))
    bad = tmp_path / "bad.pt"
    torch.save({"step": 1}, bad)
    with pytest.raises(IntegrityError):
        autoencoder_from_checkpoint(bad)


def test_an_autoencoder_shipped_beside_a_latent_prior_is_not_listed_as_a_prior(tmp_path,
                                                                               monkeypatch):
    from diffinv.diffusion import zoo

    for name, card in [("x-latent", {"kind": "diffusion", "latent": {}}),
                       ("x-latent-autoencoder", {"kind": "autoencoder-kl"}),
                       ("plain", {"schedule": "linear"})]:
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
        (tmp_path / f"{name}.json").write_text(json.dumps(card))
    (tmp_path / "orphan.safetensors").write_bytes(b"")  # no card: not listed
    monkeypatch.setattr(zoo, "embedded_dir", lambda: tmp_path)
    assert zoo.available_priors() == ["plain", "x-latent"]
