"""Measurement records: seeded creation, hidden truth, bit-exact save/load, `diffinv measure`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import diffinv
from diffinv.cli import main
from diffinv.errors import DiffinvError, MissingAssetError, NonFiniteError, ShapeError
from diffinv.physics import load_measurement, make_operator, measure, save_measurement
from diffinv.physics import measurement as measurement_module


def _images(n=3, seed=0, shape=(1, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) * 2 - 1


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_measure_is_reproducible_and_batch_independent():
    x = _images(3)
    m = measure(x, "motion-blur", "gaussian:0.05", seed=3, indices=[17, 18, 19])
    again = measure(x, "motion-blur", "gaussian:0.05", seed=3, indices=[17, 18, 19])
    _same(m.y, again.y)
    for i in range(3):
        one = measure(x[i:i + 1], "motion-blur", "gaussian:0.05", seed=3, indices=[17 + i])
        torch.testing.assert_close(one.y, m.y[i:i + 1], atol=1e-6, rtol=0)
        _same(one.params["kernel"], m.params["kernel"][i:i + 1])
    other = measure(x, "motion-blur", "gaussian:0.05", seed=4, indices=[17, 18, 19])
    assert not torch.equal(other.params["kernel"], m.params["kernel"])
    # the noise of an image does not depend on the operator
    a = measure(x, "identity", "gaussian:0.1", seed=3)
    b = measure(x, "inpaint-random", "gaussian:0.1", seed=3)
    torch.testing.assert_close(b.y - b.params["mask"] * x, a.y - x)


def test_blind_parameters_are_hidden_from_the_public_record():
    x = _images(2)
    m = measure(x, "blind-rotation-blur", "none", seed=1)
    assert m.blind and m.params == {} and set(m.true_params) == {"theta"}
    op = m.make_operator()
    assert op.blind
    torch.testing.assert_close(m.y, op(x, **m.true_params))
    with pytest.raises(DiffinvError, match="needs parameter"):
        op(x)  # what a solver gets cannot reproduce y without estimating theta
    pub = m.public()
    assert pub.x is None and pub.true_params == {} and torch.equal(pub.y, m.y)
    assert m.config["theta_range"] == [5.0, 25.0]


@pytest.mark.parametrize("family", ["blind-motion-blur", "blind-airy-blur",
                                    "blind-gaussian-blur-wide"])
def test_true_kernels_rebuild_the_hidden_blur(family):
    x = _images(3)
    m = measure(x, family, "none", seed=2, indices=[4, 5, 6])
    k = m.true_kernels()
    assert k.shape == (3, 9, 9) and (k >= 0).all()
    torch.testing.assert_close(k.sum((1, 2)), torch.ones(3))
    assert not torch.equal(k[0], k[1])  # one kernel per image, not the first one repeated
    for i in range(3):  # the returned kernel of image i, applied non-blind, gives its y
        blur = make_operator("blur", kernel=k[i], boundary=m.config.get("boundary", "circular"))
        torch.testing.assert_close(blur(x[i:i + 1]), m.y[i:i + 1], atol=1e-5, rtol=0)
    with pytest.raises(DiffinvError, match="hidden truth"):
        m.public().true_kernels()
    assert measure(x, "blind-rotation-blur", "none", seed=2).true_kernels() is None


@pytest.mark.parametrize("op,noise", [("blind-motion-blur", "poisson:25"),
                                      ("inpaint-box", "impulse:0.3"),
                                      ("phase-retrieval", "speckle:0.2"),
                                      ("sr-avgpool", "none")])
def test_save_load_round_trip_is_bit_exact(tmp_path, op, noise):
    x = _images(2)
    m = measure(x, op, noise, seed=7, indices=[4, 9], domain="mnist32", source="test")
    out = save_measurement(m, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == [".diffinv-output.json",
                                                     "measurement.safetensors", "spec.json",
                                                     "truth.safetensors", "y.png"]
    back = load_measurement(out)
    _same(back.y, m.y)
    _same(back.x, m.x)
    assert back.params.keys() == m.params.keys() and back.true_params.keys() == m.true_params.keys()
    for k in m.params:
        _same(back.params[k], m.params[k])
    for k in m.true_params:
        _same(back.true_params[k], m.true_params[k])
    for f in ("operator", "config", "noise", "seed", "domain", "indices", "source", "blind"):
        assert getattr(back, f) == getattr(m, f), f
    pub = load_measurement(out, truth=False)
    assert pub.x is None and pub.true_params == {}
    # the public file does not contain the hidden truth
    from safetensors.torch import load_file
    assert set(load_file(out / "measurement.safetensors")) == {"y"} | {f"param.{k}"
                                                                       for k in m.params}
    assert np.asarray(Image.open(out / "y.png")).size > 0
    # the top-level lazy export reads the same thing
    _same(diffinv.load_measurement(out).y, m.y)


def test_given_kernel_operator_round_trips(tmp_path):
    k = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])
    x = _images(1)
    m = measure(x, make_operator("blur", kernel=k, boundary="reflect"), "gaussian:0.01", seed=0)
    back = load_measurement(save_measurement(m, tmp_path / "m"))
    _same(back.config["kernel"], k)
    torch.testing.assert_close(back.make_operator()(x), m.make_operator()(x))


def test_measure_rejects_bad_input(tmp_path):
    x = _images(1)
    with pytest.raises(NonFiniteError):
        measure(torch.full((1, 1, 8, 8), float("nan")), "identity", "none", seed=0)
    with pytest.raises(ShapeError):
        measure(torch.zeros(1, 8, 8), "identity", "none", seed=0)
    with pytest.raises(ShapeError):
        measure(x, "identity", "none", seed=0, indices=[0, 1])
    with pytest.raises(DiffinvError, match="negative"):
        k = torch.full((1, 3, 3), 0.2)
        k[0, 0, 0] = -0.6
        measure(x, "motion-blur", "none", seed=0, params={"kernel": k})
    with pytest.raises(DiffinvError, match="sum to 1"):
        measure(x, "motion-blur", "none", seed=0, params={"kernel": torch.ones(1, 3, 3)})
    with pytest.raises(DiffinvError):
        measure(x, "identity", "gaussian:-1", seed=0)
    m = measure(x, "identity", "none", seed=0)
    save_measurement(m, tmp_path / "m")
    with pytest.raises(DiffinvError, match="not empty"):
        save_measurement(m, tmp_path / "m")
    save_measurement(m, tmp_path / "m", overwrite=True)
    with pytest.raises(MissingAssetError):
        load_measurement(tmp_path / "nothing")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    m = measure(_images(1), "identity", "none", seed=0)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(measurement_module, "_write_png", boom)
    with pytest.raises(OSError):
        save_measurement(m, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def _png(path, seed=0, size=32):
    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1)[None, None]


def test_cli_measure_image_file(tmp_path, capsys):
    x = _png(tmp_path / "a.png")
    out = tmp_path / "m"
    rc = main(["measure", str(tmp_path / "a.png"), "--op", "gaussian-blur", "-p", "std=2.0",
               "--noise", "gaussian:0.05", "--seed", "3", "-o", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    m = load_measurement(out)
    assert m.config["std"] == 2.0 and m.domain == "image" and m.seed == 3
    torch.testing.assert_close(m.x, x)
    ref = measure(x, make_operator("gaussian-blur", std=2.0), "gaussian:0.05", seed=3)
    _same(m.y, ref.y)
    spec = json.loads((out / "spec.json").read_text())
    assert spec["operator"] == "gaussian-blur" and spec["noise"] == "gaussian:0.05"


@pytest.mark.parametrize("args", [
    ["--op", "sr-avgpool", "-p", "factor=3"],     # 32 is not divisible by 3
    ["--op", "no-such-op"],
    ["--op", "identity", "--noise", "gaussian:nan"],
    ["--op", "gaussian-blur", "-p", "sigma=1"],
])
def test_cli_measure_failure_writes_nothing(tmp_path, args, capsys):
    _png(tmp_path / "a.png")
    out = tmp_path / "out" / "m"
    rc = main(["measure", str(tmp_path / "a.png"), *args, "-o", str(out)])
    assert rc == 1 and "error" in capsys.readouterr().err
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_measure_list(capsys):
    assert main(["measure", "--list"]) == 0
    text = capsys.readouterr().out
    for name in ("motion-blur", "blind-zoom-blur", "nonlinear-blur", "phase-retrieval",
                 "gaussian:SIGMA", "impulse:P"):
        assert name in text


@pytest.mark.assets
def test_cli_measure_dataset(tmp_path):
    try:
        from diffinv.data import get_images

        x, _, idx = get_images("fashion32:test:17")
    except MissingAssetError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    out = tmp_path / "m"
    assert main(["measure", "--dataset", "fashion32:test:17", "--op", "motion-blur", "--noise",
                 "gaussian:0.05", "--seed", "3", "-o", str(out)]) == 0
    m = load_measurement(out)
    assert m.domain == "fashion32" and m.indices == [17] and m.source == "fashion32:test:17"
    _same(m.x, x)
    _same(m.y, measure(x, "motion-blur", "gaussian:0.05", seed=3, indices=idx).y)


class _Halve(diffinv.physics.Operator):
    """An operator of the user's own, not in the registry: y = x / 2."""

    linear = True

    def apply(self, x, **params):
        return 0.5 * x


def test_an_unregistered_operator_measures_and_solves_in_memory_but_is_not_saved(tmp_path):
    x = _images(2)
    op = _Halve()
    m = measure(x, op, "gaussian:0.05", seed=1)
    assert m.operator == "custom:_Halve"
    assert m.make_operator() is op and m.public().make_operator() is op
    noise = m.y - 0.5 * x  # sd of a sample sd: sigma / sqrt(2 n)
    assert abs(float(noise.std()) - 0.05) < 5 * 0.05 / (2 * noise.numel()) ** 0.5
    from diffinv.diffusion import DiffusionPrior
    from diffinv.diffusion.unet import UNet
    from diffinv.solvers import make_solver

    torch.manual_seed(0)
    prior = DiffusionPrior(UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1,
                                attention_resolutions=()), image_shape=(1, 32, 32))
    out = make_solver("dps", steps=3)(m.y, m.public(), prior, seed=0)
    assert out.x.shape == x.shape and torch.isfinite(out.x).all()
    with pytest.raises(DiffinvError, match="cannot be saved"):
        save_measurement(m, tmp_path / "m")
    assert not (tmp_path / "m").exists()
