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
