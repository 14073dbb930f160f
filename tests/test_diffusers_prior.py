"""diffusers folders as priors: tiny random UNet2DModels saved with save_pretrained load through
load_prior, their schedules are diffusers' own, and a DDPM trajectory matches diffusers'
DDPMScheduler step for step on the same network and noise (epsilon, v and sample prediction,
fixed and learned-range variances). Skipped without diffusers."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffinv import load_prior  # noqa: E402
from diffinv.errors import DiffinvError  # noqa: E402

T = 40


def _save(tmp_path, *, prediction="epsilon", variance="fixed_small", schedule="linear",
          channels=1, seed=0, **extra):
    torch.manual_seed(seed)
    out = 2 * channels if variance == "learned_range" else channels
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=channels, out_channels=out,
                                 layers_per_block=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule,
                                    prediction_type=prediction, variance_type=variance, **extra)
    folder = tmp_path / f"{prediction}-{variance}-{schedule}"
    unet.save_pretrained(folder / "unet")
    sched.save_pretrained(folder / "scheduler")
    return folder, unet.eval(), sched


@pytest.mark.parametrize("prediction, variance, schedule", [
    ("epsilon", "fixed_small", "linear"),
    ("v_prediction", "fixed_small", "scaled_linear"),
    ("sample", "fixed_large", "squaredcos_cap_v2"),
    ("epsilon", "learned_range", "linear"),
])
def test_ddpm_trajectory_matches_diffusers_step_for_step(tmp_path, prediction, variance, schedule):
    folder, unet, sched = _save(tmp_path, prediction=prediction, variance=variance,
                                schedule=schedule)
    prior = load_prior(folder)
    assert prior.image_shape == (1, 8, 8) and prior.schedule.num_steps == T
    assert torch.allclose(prior.schedule.betas.float(), sched.betas, rtol=1e-6, atol=1e-9)
    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref, ours = x.clone(), x.clone()
    sched.set_timesteps(T)
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            ref = sched.step(unet(ref, t).sample, t, ref, generator=g_ref).prev_sample
            noise = torch.randn(ours.shape, generator=g_ours) if t > 0 else None
            ours, _ = prior.ddpm_step(ours, t, noise)
            assert torch.allclose(ours, ref, atol=2e-4), (t, (ours - ref).abs().max())


def test_model_folder_without_scheduler_warns_and_uses_ddpm_defaults(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                 layers_per_block=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(tmp_path / "m")
    with pytest.warns(RuntimeWarning, match="DDPMScheduler defaults"):
        prior = load_prior(tmp_path / "m")
    assert prior.schedule.num_steps == 1000 and len(prior.sha256) == 64
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(prior.eps(x, 500), unet(x, 500).sample)


@pytest.mark.parametrize("change, message", [
    ({"beta_schedule": "sigmoid"}, "beta_schedule 'sigmoid'"),
    ({"variance_type": "learned"}, "variance_type 'learned'"),
    ({"prediction_type": "flow"}, "prediction_type 'flow'"),
    ({"thresholding": True}, "thresholding"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
])
def test_unsupported_scheduler_settings_are_named(tmp_path, change, message):
    folder, _, _ = _save(tmp_path)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DiffinvError, match=message):
        load_prior(folder)


def test_pickled_weights_are_refused_and_pins_are_checked(tmp_path):
    folder, _, _ = _save(tmp_path)
    with pytest.raises(DiffinvError, match="pinned"):
        load_prior(folder, sha256="0" * 64)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(DiffinvError, match="a pickle"):
        load_prior(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffinvError, match="not a diffusers UNet folder"):
        load_prior(tmp_path / "empty")


# ------------------------------------------------ issue 36: the scheduler class is read, by name
def _with_scheduler(tmp_path, scheduler):
    """A pipeline folder of the tiny UNet with ``scheduler``'s saved config."""
    folder, _, _ = _save(tmp_path)
    cfg = folder / "scheduler" / "scheduler_config.json"
    cfg.unlink()
    scheduler.save_pretrained(folder / "scheduler")
    return folder


@pytest.mark.parametrize("make", [
    lambda: diffusers.ScoreSdeVeScheduler(),
    lambda: diffusers.EDMEulerScheduler(),
    lambda: diffusers.EulerDiscreteScheduler(timestep_type="continuous"),
    lambda: diffusers.EulerDiscreteScheduler(num_train_timesteps=T),
    lambda: diffusers.FlowMatchHeunDiscreteScheduler(),
    lambda: diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T),
    lambda: diffusers.LCMScheduler(num_train_timesteps=T),
], ids=["score-sde-ve", "edm-euler", "euler-continuous", "euler", "flow-match-heun",
        "dpm-solver", "lcm"])
def test_schedulers_the_loader_does_not_model_are_refused_by_name(tmp_path, make):
    scheduler = make()
    folder = _with_scheduler(tmp_path, scheduler)
    name = type(scheduler).__name__
    with pytest.raises(DiffinvError, match=rf"scheduler {name} is not supported.*supported: "
                                           r"DDIMParallelScheduler, DDIMScheduler, "
                                           r"DDPMParallelScheduler, DDPMScheduler, PNDMScheduler"):
        load_prior(folder)


def test_a_scheduler_config_without_its_class_name_is_refused(tmp_path):
    folder, _, _ = _save(tmp_path)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["_class_name"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DiffinvError, match=r"names no scheduler class \(_class_name\)"):
        load_prior(folder)


@pytest.mark.parametrize("make", [
    lambda: diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear"),
    lambda: diffusers.DDIMParallelScheduler(num_train_timesteps=T),
    lambda: diffusers.DDPMParallelScheduler(num_train_timesteps=T, beta_schedule="scaled_linear"),
    lambda: diffusers.PNDMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2"),
], ids=["ddim", "ddim-parallel", "ddpm-parallel", "pndm"])
def test_the_ddpm_family_loads_with_its_own_betas(tmp_path, make):
    scheduler = make()
    prior = load_prior(_with_scheduler(tmp_path, scheduler))
    assert prior.schedule.num_steps == T
    assert torch.allclose(prior.schedule.betas.float(), scheduler.betas, rtol=1e-6, atol=1e-9)
    assert prior.schedule.kind == scheduler.config.beta_schedule


def test_defaulted_betas_are_labelled_defaulted_not_trained(tmp_path):
    folder, _, sched = _save(tmp_path)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("beta_schedule", "trained_betas"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg))
    prior = load_prior(folder)
    assert prior.schedule.kind == "linear (defaulted)"
    assert torch.allclose(prior.schedule.betas.float(), sched.betas, rtol=1e-6, atol=1e-9)
    cfg["trained_betas"] = sched.betas.tolist()
    cfg_path.write_text(json.dumps(cfg))
    assert load_prior(folder).schedule.kind == "trained"


def test_a_folder_without_scheduler_labels_its_betas_defaulted(tmp_path):
    folder, _, _ = _save(tmp_path)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.warns(RuntimeWarning, match="DDPMScheduler defaults"):
        prior = load_prior(folder)
    assert prior.schedule.kind == "linear (defaulted)"
