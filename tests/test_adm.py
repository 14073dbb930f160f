"""The guided-diffusion (ADM) UNet: official parameter layout, forward pass, loading checkpoints."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from diffinv.diffusion.adm import ADM_PRESETS, ADMUNet, AttentionBlock
from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.zoo import load_prior
from diffinv.errors import DiffinvError, IntegrityError, UnknownNameError

LAYOUTS = json.loads((Path(__file__).parent / "fixtures" / "adm_layouts.json").read_text())
#: fixture layout -> the preset that must reproduce it
FIXTURE_PRESETS = {"adm_ffhq256": "adm-ffhq256", "adm_large256": "adm-imagenet256-uncond"}

TINY = dict(
    image_size=32,
    in_channels=3,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[16],
    num_heads=4,
    num_head_channels=16,
    learn_sigma=True,
    use_scale_shift_norm=True,
    resblock_updown=True,
)


def _randomised(cfg: dict, seed: int = 0) -> ADMUNet:
    """A tiny ADM with every weight random (zero-initialised layers would hide mistakes)."""
    torch.manual_seed(seed)
    net = ADMUNet(**cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("layout", sorted(FIXTURE_PRESETS))
def test_presets_reproduce_the_official_layout(layout):
    ref = LAYOUTS[layout]
    with torch.device("meta"):
        net = ADMUNet(**ADM_PRESETS[FIXTURE_PRESETS[layout]]["adm"])
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == ref["tensors"]  # names, shapes and order
    assert len(got) == ref["num_tensors"]
    assert sum(p.numel() for p in net.parameters()) == ref["num_params"]


def test_lsun_preset_shares_the_large_layout():
    with torch.device("meta"):
        net = ADMUNet(**ADM_PRESETS["adm-lsun-bedroom256"]["adm"])
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == LAYOUTS["adm_large256"][
        "tensors"
    ]


def test_tiny_forward_learn_sigma_and_batch_independence():
    net = _randomised(TINY)
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([0, 500, 999])
    out = net(x, t)
    assert out.shape == (3, 6, 32, 32) and torch.isfinite(out).all()
    singles = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    assert torch.allclose(out, singles, atol=1e-5)
    assert not torch.allclose(net(x, 10), net(x, 900))  # the timestep matters
    # resampling without resblocks (Downsample.op / Upsample.conv) also runs
    plain = _randomised(dict(TINY, resblock_updown=False, use_scale_shift_norm=False))
    assert "input_blocks.2.0.op.weight" in plain.state_dict()
    assert "output_blocks.1.2.conv.weight" in plain.state_dict()
    assert plain(x, t).shape == (3, 6, 32, 32)


def _attention_by_hand(block: AttentionBlock, x: torch.Tensor, legacy: bool) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) per head, with the head split written out index by index."""
    b, c, h, w = x.shape
    n, d = block.num_heads, c // block.num_heads
    qkv = block.qkv(block.norm(x.reshape(b, c, -1)))
    heads = []
    for i in range(n):
        if legacy:
            base = i * 3 * d
            q, k, v = (qkv[:, base + j * d : base + (j + 1) * d] for j in range(3))
        else:
            q, k, v = (qkv[:, j * c + i * d : j * c + (i + 1) * d] for j in range(3))
        a = torch.softmax(torch.einsum("bdl,bdm->blm", q, k) / d**0.5, dim=-1)
        heads.append(torch.einsum("blm,bdm->bdl", a, v))
    out = block.proj_out(torch.cat(heads, dim=1))
    return x + out.reshape(b, c, h, w)


@pytest.mark.parametrize("legacy", [True, False])
def test_attention_head_order(legacy):
    torch.manual_seed(1)
    block = AttentionBlock(64, num_head_channels=16, new_attention_order=not legacy)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 64, 4, 4)
    assert block.num_heads == 4
    assert torch.allclose(block(x), _attention_by_hand(block, x, legacy), atol=1e-5)


def test_learned_range_prior_samples_from_a_tiny_adm():
    net = _randomised(TINY)
    with torch.no_grad():  # keep eps and v moderate so a few steps stay in range
        net.out[2].weight.mul_(0.1)
    prior = DiffusionPrior(
        net, VPSchedule.linear(), image_shape=(3, 32, 32), variance="learned_range"
    )
    x = prior.sample(2, seed=0, method="ddpm", steps=3)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    assert prior.nfe == 3
    eps, v = prior.net_out(torch.randn(2, 3, 32, 32), 500)
    assert eps.shape == v.shape == (2, 3, 32, 32)


@pytest.fixture
def tiny_ckpt(tmp_path):
    net = _randomised(TINY, seed=3)
    path = tmp_path / "tiny_adm.pt"
    torch.save(net.state_dict(), path)  # a plain state_dict, as the official files are
    return net, path


def test_adm_checkpoint_loads_strictly_with_identical_outputs(tiny_ckpt):
    net, path = tiny_ckpt
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([7, 700])
    want = net(x, t)
    prior = load_prior(path, config={"adm": TINY})
    assert prior.variance == "learned_range" and prior.image_shape == (3, 32, 32)
    assert prior.schedule.num_steps == 1000 and len(prior.sha256) == 64
    assert torch.equal(prior.network(x, t), want)
    eps, v = prior.net_out(x, t)
    assert torch.equal(torch.cat([eps, v], 1), want)
    # the same through a JSON beside the file, with the SHA-256 pinned there
    path.with_suffix(".json").write_text(json.dumps({"adm": TINY, "sha256": prior.sha256}))
    assert torch.equal(load_prior(path).network(x, t), want)
    # ... and a config given as a JSON path, with the pin as an argument
    cfg = path.parent / "cfg.json"
    cfg.write_text(json.dumps({"adm": TINY}))
    assert torch.equal(load_prior(path, config=cfg, sha256=prior.sha256).network(x, t), want)


def test_a_wrong_pin_or_truncated_file_is_refused(tiny_ckpt, tmp_path):
    _, path = tiny_ckpt
    with pytest.raises(IntegrityError, match="SHA-256"):
        load_prior(path, config={"adm": TINY}, sha256="0" * 64)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IntegrityError, match="refused|not a readable torch file"):
        load_prior(cut, config={"adm": TINY})


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_foreign_and_malicious_pickles_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"time_embed.0.weight": _Evil()}, f)
    with pytest.raises(IntegrityError, match="refused|not a readable torch file"):
        load_prior(evil, config="adm-ffhq256")
    assert "pwned" not in capsys.readouterr().out
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(IntegrityError, match="refused|not a readable torch file"):
        load_prior(junk, config="adm-ffhq256")
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, nested)
    with pytest.raises(IntegrityError, match="not a plain state_dict"):
        load_prior(nested, config="adm-ffhq256")


def test_mismatched_config_names_the_problem(tiny_ckpt):
    _, path = tiny_ckpt
    with pytest.raises(IntegrityError, match=r"shape mismatch: out\.2\.weight \(6, 32, 3, 3\)"):
        load_prior(path, config={"adm": dict(TINY, learn_sigma=False)})
    with pytest.raises(IntegrityError, match="missing: .*input_blocks.3"):
        load_prior(path, config={"adm": dict(TINY, num_res_blocks=2)})
    with pytest.raises(IntegrityError, match="do not match"):
        load_prior(path, config="adm-ffhq256")  # the real FFHQ layout, built at full size
    with pytest.raises(IntegrityError, match="bad network config"):
        load_prior(path, config={"adm": dict(TINY, num_head_channels=24)})


def test_missing_config_and_unknown_presets_are_explained(tiny_ckpt):
    _, path = tiny_ckpt
    with pytest.raises(DiffinvError, match="adm-ffhq256.*tiny_adm.json"):
        load_prior(path)
    with pytest.raises(UnknownNameError, match="unknown ADM preset 'adm-ffhq'; known: adm-ffhq256"):
        load_prior(path, config="adm-ffhq")
    with pytest.raises(UnknownNameError, match="adm-imagenet256-uncond"):
        load_prior(path, config={"preset": "ffhq"})
    with pytest.raises(DiffinvError, match="config= applies"):
        load_prior("mnist32", config="adm-ffhq256")
