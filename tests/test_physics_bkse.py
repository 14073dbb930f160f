"""The bkse KernelWizard loader (DPS's nonlinear blur): key layout, safe loading, a user's file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diffinv.errors import IntegrityError, MissingAssetError, ShapeError
from diffinv.physics.bkse import WEIGHTS_ENV, BkseBlur, KernelWizard, load_kernel_wizard
from diffinv.seeding import image_generators

TINY = dict(channels=3, nf=4, front_blocks=1, back_blocks=1, latent_dim=32, extractor_blocks=1)


def test_state_dict_layout_matches_the_gopro_checkpoint_names():
    """Keys and shapes that bkse's KernelWizard (generate_blur/default.yml) gives its state dict."""
    with torch.device("meta"):
        net = KernelWizard()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    inner = "adapter.model" + ".submodule" * 4
    expected = {
        "feature_extractor.0.weight": (64, 3, 3, 3),
        "feature_extractor.15.conv2.weight": (64, 64, 3, 3),
        "kernel_extractor.model.1.weight": (64, 128, 7, 7),
        "kernel_extractor.model.16.weight": (1024, 1024, 3, 3),
        "kernel_extractor.model.22.conv_block.5.weight": (1024, 1024, 3, 3),
        "adapter.model.down.0.weight": (64, 64, 4, 4),
        "adapter.model.up.1.double_conv.0.weight": (64, 128, 5, 5),
        "adapter.model.up.1.double_conv.2.bias": (64,),
        "adapter.model.submodule.down.1.weight": (128, 64, 4, 4),
        f"{inner}.down.1.weight": (512, 512, 4, 4),
        f"{inner}.up.1.double_conv.0.weight": (512, 1024, 5, 5),
        "recon_trunk.19.conv2.bias": (64,),
        "recon_trunk.23.weight": (256, 64, 3, 3),
        "recon_trunk.28.weight": (3, 64, 3, 3),
    }
    for k, shape in expected.items():
        assert shapes.get(k) == shape, k
    # no biases where bkse's norm "none" turns use_bias off
    assert "kernel_extractor.model.1.bias" not in shapes
    assert "adapter.model.down.0.bias" not in shapes
    # 46 feature-extractor, 14 kernel-extractor, 25 adapter and 88 reconstruction tensors
    assert len(shapes) == 173


def test_round_trip_through_weights_only_loading(tmp_path):
    torch.manual_seed(0)
    net = KernelWizard(**TINY).eval()
    path = tmp_path / "tiny.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = load_kernel_wizard(path, **TINY)
    x = torch.rand(1, 3, 128, 128)
    z = torch.randn(1, 32, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.adapt(x, z), net.adapt(x, z))
        x2 = torch.rand(1, 3, 256, 256)
        mu, logvar = loaded.encode(x2, x2)
    assert mu.shape == logvar.shape == (1, 32, 2, 2)
    with pytest.raises(IntegrityError, match="does not match"):
        load_kernel_wizard(path, **{**TINY, "nf": 8, "latent_dim": 64})


class Payload:
    """An arbitrary object: its pickle needs code execution, which weights_only refuses."""


def test_unsafe_or_missing_files_are_refused(tmp_path, monkeypatch):
    bad = tmp_path / "code.pth"
    torch.save({"x": Payload()}, bad)
    with pytest.raises(IntegrityError):
        load_kernel_wizard(bad, **TINY)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingAssetError, match=WEIGHTS_ENV):
        load_kernel_wizard(tmp_path / "absent.pth")
    with pytest.raises(MissingAssetError):
        load_kernel_wizard()


@pytest.mark.assets
def test_users_gopro_checkpoint():
    path = os.environ.get(WEIGHTS_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"bkse weights absent: download GOPRO_wVAE.pth and set {WEIGHTS_ENV}=PATH")
    op = BkseBlur(path)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    p = op.draw_params(image_generators(0, [0]), x.shape[1:])
    assert p["latent"].shape == (1, 512, 1, 1)
    with torch.no_grad():
        y = op(x, **p)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() > 1e-3  # it blurs
    with pytest.raises(ShapeError):
        op(torch.zeros(1, 3, 32, 32), latent=p["latent"])
