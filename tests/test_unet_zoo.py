"""The UNet, exporting and loading priors, and refusal of corrupt or mismatched files."""

import json
import pickle
import warnings

import pytest
import torch

from diffinv.diffusion.unet import UNet
from diffinv.diffusion.zoo import load_prior
from diffinv.errors import DiffinvError, IntegrityError, ShapeError, UnknownNameError
from diffinv.learn.checkpoint import load_checkpoint
from diffinv.learn.trainer import TrainConfig, export_prior, train_prior


def test_unet_shapes_and_errors(tiny_unet_config):
    net = UNet(in_channels=1, **tiny_unet_config)
    x = torch.randn(3, 1, 32, 32)
    assert net(x, torch.tensor([0, 10, 999])).shape == (3, 1, 32, 32)
    assert net(x, 5).shape == (3, 1, 32, 32)  # scalar t broadcasts
    rgb = UNet(in_channels=3, learn_sigma=True, **tiny_unet_config)
    assert rgb(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).shape == (2, 6, 16, 16)
    with pytest.raises(ShapeError, match="channels|expects"):
        net(torch.randn(1, 3, 32, 32), 0)
    with pytest.raises(ShapeError, match="divisible"):
        net(torch.randn(1, 1, 31, 31), 0)


def test_unet_batch_independence(tiny_unet_config):
    torch.manual_seed(0)
    net = UNet(**tiny_unet_config).eval()
    for p in net.parameters():  # zero-initialised convs would hide mixing: randomise all weights
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(4, 1, 32, 32)
    t = torch.tensor([3, 300, 600, 900])
    full = net(x, t)
    singles = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    assert torch.allclose(full, singles, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("prior")
    cfg = TrainConfig(
        out=str(d / "run"),
        steps=4,
        batch=4,
        ckpt_every=2,
        log_every=2,
        warmup=1,
        unet=dict(
            base_channels=16, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[8]
        ),
    )
    data = torch.rand(10, 1, 16, 16) * 2 - 1
    ckpt = train_prior(cfg, data=data, progress=False)
    path = export_prior(ckpt, d / "export", "toy16")
    return ckpt, path


def test_export_and_load_roundtrip(trained):
    ckpt, path = trained
    prior = load_prior(path)
    assert prior.image_shape == (1, 16, 16)
    state = load_checkpoint(ckpt)
    net = UNet(**json.loads(path.with_suffix(".json").read_text())["unet"])
    net.load_state_dict(state["ema"]["model"])
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(prior.eps(x, 10), net(x, torch.tensor([10, 10])))
    from_ckpt = load_prior(ckpt)
    assert torch.equal(from_ckpt.eps(x, 10), prior.eps(x, 10))
    assert len(prior.sha256) == 64


def test_truncated_weights_are_refused(trained, tmp_path):
    _, path = trained
    bad = tmp_path / "toy16.safetensors"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    meta = json.loads(path.with_suffix(".json").read_text())
    (tmp_path / "toy16.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="SHA-256"):
        load_prior(bad)
    meta.pop("sha256")
    (tmp_path / "toy16.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="safetensors"):
        load_prior(bad)


def test_mismatched_config_is_refused(trained, tmp_path):
    _, path = trained
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["unet"]["base_channels"] = 32
    (tmp_path / "toy16.safetensors").write_bytes(path.read_bytes())
    (tmp_path / "toy16.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="do not match"):
        load_prior(tmp_path / "toy16.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_foreign_and_malicious_checkpoints_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(IntegrityError):
        load_prior(evil)
    assert "pwned" not in capsys.readouterr().out
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(IntegrityError):
        load_prior(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(IntegrityError, match="not a diffinv training checkpoint"):
        load_prior(foreign)


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown prior 'celeba'"):
        load_prior("celeba")
    with pytest.raises(DiffinvError, match="does not exist"):
        load_prior(tmp_path / "missing.safetensors")


def test_bf16_precision_is_bf16_close_to_fp32_and_keeps_gradients():
    import diffinv

    full = diffinv.load_prior("fashion32")
    half = diffinv.load_prior("fashion32", precision="bf16")
    assert (full.precision, half.precision) == ("fp32", "bf16")
    assert half.respaced([0, 500, 999]).precision == "bf16"
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for t in (10, 500, 990):
        a, b = full.eps(x, t), half.eps(x, t)
        assert b.dtype == torch.float32
        rel = float((a - b).norm() / a.norm())
        # bf16 keeps 8 significand bits (relative rounding 2^-9 per value): errors of a few
        # roundings through the network, never exact agreement (autocast really on)
        assert 0 < rel < 2**-5, rel
    xx = x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(full.x0(xx, 300).sum(), xx)
    (gb,) = torch.autograd.grad(half.x0(xx, 300).sum(), xx)
    assert float((ga - gb).norm() / ga.norm()) < 2**-4


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bfloat16_warns_once(monkeypatch, native):
    from diffinv.diffusion import prior as prior_module

    monkeypatch.setattr(prior_module, "cpu_has_native_bf16", lambda: native)
    prior_module._warn_emulated_bf16.cache_clear()
    half = load_prior("fashion32", precision="bf16")
    x = torch.zeros(1, 1, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half.eps(x, 10)
        half.eps(x, 20)
        load_prior("fashion32").eps(x, 10)  # fp32 never warns
    emulated = [w for w in caught if "without native bfloat16" in str(w.message)]
    assert len(emulated) == (0 if native else 1)
    prior_module._warn_emulated_bf16.cache_clear()


def test_unknown_precision_is_refused():
    with pytest.raises(UnknownNameError, match="bf16"):
        load_prior("fashion32", precision="fp16")
