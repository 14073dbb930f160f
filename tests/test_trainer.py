"""The trainer: exact resumption and DDP equivalence to a single process."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffinv.errors import DiffinvError
from diffinv.learn.checkpoint import load_checkpoint
from diffinv.learn.trainer import TrainConfig, draw_batch, learning_rate, train_prior

UNET = dict(base_channels=16, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[8])


def _cfg(out, **kw):
    base = dict(
        out=str(out), steps=6, batch=4, ckpt_every=2, log_every=2, warmup=2, unet=dict(UNET)
    )
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_batches_depend_only_on_seed_and_step():
    a = draw_batch(100, 8, 1000, (1, 4, 4), seed=3, step=7)
    b = draw_batch(100, 8, 1000, (1, 4, 4), seed=3, step=7)
    c = draw_batch(100, 8, 1000, (1, 4, 4), seed=3, step=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[2], c[2])


def test_killed_run_resumes_to_identical_weights(tmp_path):
    straight = load_checkpoint(train_prior(_cfg(tmp_path / "a"), data=_data(), progress=False))
    train_prior(_cfg(tmp_path / "b"), data=_data(), progress=False, max_steps_this_run=3)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    resumed = load_checkpoint(train_prior(_cfg(tmp_path / "b"), data=_data(), progress=False))
    assert resumed["step"] == straight["step"] == 6
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for k, v in straight["ema"]["model"].items():
        assert torch.equal(v, resumed["ema"]["model"][k]), k


def test_resume_refuses_another_network(tmp_path):
    train_prior(_cfg(tmp_path), data=_data(), progress=False, max_steps_this_run=2)
    with pytest.raises(DiffinvError, match="another network"):
        train_prior(_cfg(tmp_path, unet=dict(UNET, base_channels=32)), data=_data(), progress=False)


def test_bf16_autocast_changes_the_arithmetic_but_not_the_loss_beyond_bf16_rounding():
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.unet import UNet
    from diffinv.learn.trainer import autocast, diffusion_loss

    torch.manual_seed(0)
    net = UNet(**UNET, in_channels=1, image_size=16)
    with torch.no_grad():  # the output layer starts at zero: give it weights so eps_theta != 0
        for p in net.parameters():
            if not p.abs().max():
                p.normal_(0, 0.05)
    sched = VPSchedule.from_name("linear", 1000)
    x0, t, noise = _data()[:8], torch.arange(8) * 120, torch.randn(8, 1, 16, 16)
    full = diffusion_loss(net, sched, x0, t, noise)
    with autocast("bf16", torch.device("cpu")):
        half = diffusion_loss(net, sched, x0, t, noise)
    assert half.dtype == torch.float32
    assert half.item() != full.item()  # autocast is really on
    # bf16 keeps 8 significand bits: relative rounding 2^-8 per op; the loss is a mean of 2048
    # squared errors, so its relative error stays well under a few 2^-8
    assert abs(half.item() - full.item()) / full.item() < 4 * 2**-8


def test_bf16_training_runs_and_the_log_keeps_each_phase(tmp_path):
    import json

    train_prior(_cfg(tmp_path), data=_data(), progress=False, max_steps_this_run=2)
    train_prior(_cfg(tmp_path, precision="bf16", lr=1e-4), data=_data(), progress=False)
    lines = [json.loads(s) for s in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    starts = [r for r in lines if r.get("event") == "start"]
    assert [(r["step"], r["config"]["precision"], r["config"]["lr"]) for r in starts] == [
        (0, "fp32", 6e-4),
        (2, "bf16", 1e-4),
    ]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(DiffinvError, match="precision"):
        train_prior(_cfg(tmp_path, precision="fp8"), data=_data(), progress=False)


def test_learning_rate_warmup_and_cosine():
    cfg = TrainConfig(lr=1e-3, warmup=10, steps=100, lr_schedule="cosine")
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(
        0.1e-3 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.09))
    )
    assert learning_rate(cfg, 100) == pytest.approx(1e-4)
    with pytest.raises(DiffinvError):
        TrainConfig(lr_schedule="step").validate()


def test_cosine_decay_can_start_late():
    """Constant (after warm-up) until decay_start, then the same cosine squeezed into the rest."""
    cfg = TrainConfig(lr=1e-3, warmup=10, steps=300, lr_schedule="cosine", decay_start=200)
    assert learning_rate(cfg, 5) == pytest.approx(0.6e-3)
    assert learning_rate(cfg, 150) == pytest.approx(1e-3)
    assert learning_rate(cfg, 200) == pytest.approx(1e-3)
    assert learning_rate(cfg, 250) == pytest.approx(0.1e-3 + 0.9e-3 * 0.5)
    assert learning_rate(cfg, 300) == pytest.approx(1e-4)
    assert learning_rate(cfg, 400) == pytest.approx(1e-4)
    for bad in (-1, 300, 301):
        with pytest.raises(DiffinvError, match="decay_start"):
            TrainConfig(steps=300, lr_schedule="cosine", decay_start=bad).validate()


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from diffinv.learn.trainer import TrainConfig, train_prior
    out, batch = sys.argv[1], int(sys.argv[2])
    data = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cfg = TrainConfig(out=out, steps=3, batch=batch, ckpt_every=3, log_every=3, warmup=1,
                      unet=dict(base_channels=16, channel_mults=[1, 2], num_res_blocks=1,
                                attention_resolutions=[8]))
    train_prior(cfg, data=data, progress=False, device="cpu")
""")


def test_two_ddp_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single"), "8"],
        check=True,
        env=env,
        timeout=300,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            str(script),
            str(tmp_path / "ddp"),
            "8",
        ],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    single = load_checkpoint(Path(tmp_path / "single" / "checkpoint.pt"))
    ddp = load_checkpoint(Path(tmp_path / "ddp" / "checkpoint.pt"))
    # Adam divides by sqrt(v): parameters whose gradients are ~0 turn float-summation-order noise
    # into updates of up to ~1% of one step (lr 6e-4 here); a rank-slicing error moves weights by
    # whole steps, far beyond this tolerance.
    moved = 0.0
    for k, v in single["model"].items():
        assert torch.allclose(v, ddp["model"][k], atol=2e-5, rtol=1e-4), k
    first = load_checkpoint(Path(tmp_path / "single" / "checkpoint.pt"))["opt"]
    assert first["state"], "optimizer never stepped"
    for k, v in single["ema"]["model"].items():
        moved = max(moved, (v - single["model"][k]).abs().max().item())
    assert moved > 1e-4, "weights did not move: nothing was trained"


SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from diffinv.learn.trainer import TrainConfig, train_prior
    data = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cfg = TrainConfig(out=sys.argv[1], steps=int(sys.argv[2]), batch=4, ckpt_every=1000,
                      log_every=1, warmup=2,
                      unet=dict(base_channels=16, channel_mults=[1, 2], num_res_blocks=1,
                                attention_resolutions=[8]))
    train_prior(cfg, data=data, progress=False)
""")


def test_sigterm_checkpoints_the_last_finished_step_and_resume_is_exact(tmp_path):
    import signal
    import time

    script = tmp_path / "train.py"
    script.write_text(SIGNAL_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(script), str(run), "100000"], env=env)
    log = run / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0  # a clean exit, not a kill
    state = load_checkpoint(run / "checkpoint.pt")
    done = state["step"]
    assert done >= 3  # ckpt_every=1000: only the signal can have written this checkpoint
    # resuming to done + 2 steps equals an uninterrupted run of done + 2 steps
    subprocess.run([sys.executable, str(script), str(run), str(done + 2)], env=env, check=True,
                   timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "straight"), str(done + 2)], env=env,
                   check=True, timeout=300)
    a = load_checkpoint(run / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
