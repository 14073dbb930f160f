"""The supervised deblurring UNet: its trainer (pairs, resumption, export) and its solver."""

from __future__ import annotations

import json

import pytest
import torch

from diffinv.errors import DiffinvError, IntegrityError, ShapeError
from diffinv.learn.deblur_net import DeblurUNet
from diffinv.learn.deblur_trainer import (
    BLIND_FAMILIES,
    DeblurTrainConfig,
    _ops,
    export_deblur_net,
    make_pairs,
    train_deblur_net,
)
from diffinv.physics import measure
from diffinv.solvers import make_solver

NET = dict(base=8, mults=[1, 2], blocks=1)


class NoPrior:
    nfe = 0

    def reset_nfe(self) -> None:
        pass


def data(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def test_untrained_net_is_the_identity_and_refuses_other_shapes():
    net = DeblurUNet(in_channels=1, image_size=16, **NET)
    y = data(2)
    assert torch.equal(net(y), y)  # zero-initialised head: x_hat = y
    with pytest.raises(ShapeError, match=r"\(1, 16, 16\).*\(2, 1, 32, 32\)"):
        net(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ShapeError, match=r"\(1, 16, 16\).*\(2, 3, 16, 16\)"):
        net(torch.zeros(2, 3, 16, 16))


def test_pairs_are_seeded_and_use_every_family():
    x = data(64, 16)
    ops = _ops(list(BLIND_FAMILIES))
    y1, info1 = make_pairs(x, ops, seed=0, step=5, sigma_max=0.05)
    y2, info2 = make_pairs(x, ops, seed=0, step=5, sigma_max=0.05)
    assert torch.equal(y1, y2) and torch.equal(info1["family"], info2["family"])
    y3, _ = make_pairs(x, ops, seed=0, step=6, sigma_max=0.05)
    assert not torch.equal(y1, y3)
    assert set(info1["family"].tolist()) == {0, 1, 2, 3}
    assert (info1["sigma"] >= 0).all() and (info1["sigma"] <= 0.05).all()
    # noise-free pairs are exactly the family's operator with its own drawn parameters
    y0, info0 = make_pairs(x, ops, seed=0, step=5, sigma_max=0.0)
    assert (y0 - x).abs().max() > 1e-3  # blurred
    assert torch.allclose(y0.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.05)  # blur keeps the mean


def _cfg(tmp_path, steps, **kw):
    return DeblurTrainConfig(out=str(tmp_path), steps=steps, batch=4, warmup=1, ckpt_every=100,
                             log_every=1, net=dict(NET), **kw)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    x = data(16, 16)
    a = train_deblur_net(_cfg(tmp_path / "a", 4), data=x, progress=False)
    b_cfg = _cfg(tmp_path / "b", 4)
    train_deblur_net(b_cfg, data=x, progress=False, max_steps_this_run=2)
    b = train_deblur_net(b_cfg, data=x, progress=False)
    sa = torch.load(a, weights_only=True)
    sb = torch.load(b, weights_only=True)
    assert sa["step"] == sb["step"] == 4
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    with pytest.raises(DiffinvError, match="another network"):
        train_deblur_net(_cfg(tmp_path / "a", 8, sigma_max=0.1), data=x, progress=False)


def test_trainer_reduces_the_loss(tmp_path):
    # piecewise-constant images (4x4 blocks): the first logged loss is about that of x_hat = y
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(torch.rand(8, 1, 4, 4, generator=g) * 2 - 1,
                                        scale_factor=4, mode="nearest")
    train_deblur_net(DeblurTrainConfig(out=str(tmp_path), steps=60, batch=8, warmup=5, lr=3e-3,
                                       log_every=10, ckpt_every=100, net=dict(NET)),
                     data=x, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [e["l1"] for e in log if "l1" in e]
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny network trained for 2 steps at 16x16 and exported with its card (validation
    monkeypatched away: it would read the fashion32 valid split)."""
    import diffinv.learn.deblur_trainer as dt

    d = tmp_path_factory.mktemp("deblur")
    ckpt = train_deblur_net(_cfg(d / "run", 2), data=data(8, 16), progress=False)
    orig = dt.validate
    dt.validate = lambda *a, **k: {}
    try:
        path = export_deblur_net(ckpt, d / "export", "tiny", extra={"command": "test"})
    finally:
        dt.validate = orig
    return path


def test_solver_loads_an_exported_net_and_refuses_other_sizes(exported):
    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["steps"] == 2 and card["image_shape"] == [1, 16, 16] and card["sha256"]
    solver = make_solver("supervised-unet", weights=str(exported))
    x = data(2, 16)
    m = measure(x, "blind-zoom-blur", "gaussian:0.02", seed=0)
    r = solver(m.y, m.public(), NoPrior(), seed=0)
    assert r.x.shape == x.shape and r.nfe == 0 and "kernel" not in r.trace
    assert r.trace["network"] == "supervised UNet, trained here"
    # batch independence
    r0 = solver(m.y[:1], m.public(), NoPrior(), seed=0)
    assert torch.allclose(r0.x, r.x[:1], atol=1e-6)
    big = measure(data(1, 32), "blind-zoom-blur", "gaussian:0.02", seed=0)
    with pytest.raises(ShapeError, match=r"trained on images \(1, 16, 16\).*\(1, 32, 32\)"):
        solver(big.y, big.public(), NoPrior())


def test_solver_refuses_a_corrupt_file(exported, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(exported.read_bytes()[:-8] + b"\0" * 8)
    bad.with_suffix(".json").write_text(exported.with_suffix(".json").read_text())
    with pytest.raises(IntegrityError, match="SHA-256"):
        s = make_solver("supervised-unet", weights=str(bad))
        m = measure(data(1, 16), "blind-zoom-blur", "gaussian:0.02", seed=0)
        s(m.y, m.public(), NoPrior())


@pytest.mark.assets
def test_shipped_net_beats_the_measurement_on_fashion32_valid():
    """The shipped weights improve PSNR over y itself on 16 valid images of every family."""
    from diffinv.metrics import psnr

    try:
        from diffinv.data import load_split

        x = load_split("fashion32", "valid").images[:16]
    except Exception as e:  # noqa: BLE001 -- data not installed
        pytest.skip(f"fashion32 not installed: {e}")
    solver = make_solver("supervised-unet")
    for fam in BLIND_FAMILIES:
        m = measure(x, fam, "gaussian:0.02", seed=0)
        r = solver(m.y, m.public(), NoPrior())
        assert psnr(r.x, x).mean() > psnr(m.y, x).mean() + 1.0, fam
