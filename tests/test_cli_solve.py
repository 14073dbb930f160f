"""``diffinv solve`` end to end: `diffinv measure` on fashion32 test images, a tiny trained and
exported prior, fast solvers (DDRM, PiGDM with few steps, DMPlug + ES-WMV with a few iterations);
the outputs, their agreement with a direct Python call, and the refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffinv.cli import main
from diffinv.errors import MissingAssetError


def _measure(out: Path, op: str, noise: str = "gaussian:0.05") -> Path:
    try:
        from diffinv.data import load_split

        load_split("fashion32", "test")
    except MissingAssetError as e:
        pytest.skip(f"fashion32 is not installed: {e}")
    assert main(["measure", "--dataset", "fashion32:test:0-1", "--op", op, "--noise", noise,
                 "--seed", "3", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def blurred(tmp_path_factory) -> Path:
    return _measure(tmp_path_factory.mktemp("m") / "blur", "gaussian-blur")


def _direct(measurement: Path, prior: Path, solver: str, seed: int, **params):
    from diffinv import load_prior
    from diffinv.physics import load_measurement
    from diffinv.solvers import make_solver

    m = load_measurement(measurement)
    return make_solver(solver, **params)(m.y, m.public(), load_prior(prior), seed=seed), m


def _nothing_written(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))


@pytest.mark.assets
@pytest.mark.parametrize("solver, params", [("ddrm", {"steps": 3}),
                                            ("pigdm", {"steps": 3})])
def test_solve_writes_result_panel_metrics_equal_to_a_direct_call(
        tmp_path, tiny_prior, blurred, capsys, solver, params):
    out = tmp_path / "out"
    argv = ["solve", str(blurred), "--solver", solver, "--prior", str(tiny_prior), "--seed", "5",
            "-o", str(out), "--no-progress"]
    for k, v in params.items():
        argv += ["-p", f"{k}={v}"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    for f in ("result.png", "result.safetensors", "panel.png", "metrics.json"):
        assert (out / f).is_file(), f
    x = load_file(str(out / "result.safetensors"))["x"]
    info = json.loads((out / "metrics.json").read_text())

    direct, m = _direct(blurred, tiny_prior, solver, 5, **params)
    assert torch.equal(x, direct.x)  # same solver, same seed: bit for bit
    assert x.shape == m.x.shape == (2, 1, 32, 32)
    assert info["nfe"] == direct.nfe == 3 and info["seconds"] > 0
    assert info["solver"] == solver and info["seed"] == 5 and info["prior_sha256"]
    from diffinv.metrics import psnr, ssim

    assert info["psnr"] == pytest.approx(psnr(x, m.x).tolist(), abs=1e-5)
    assert info["ssim"] == pytest.approx(ssim(x, m.x).tolist(), abs=1e-5)


@pytest.mark.assets
def test_solve_dmplug_with_wmv_reports_the_pick_and_the_oracle_apart(tmp_path, tiny_prior,
                                                                     blurred):
    out = tmp_path / "dm"
    params = {"iterations": 6, "window": 2, "patience": 2}
    argv = ["solve", str(blurred), "--solver", "dmplug", "--early-stop", "wmv", "--prior",
            str(tiny_prior), "-o", str(out), "--no-progress"]
    for k, v in params.items():
        argv += ["-p", f"{k}={v}"]
    assert main(argv) == 0
    info = json.loads((out / "metrics.json").read_text())
    x = load_file(str(out / "result.safetensors"))["x"]
    # the CLI passes the record's truth for evaluation only: the output is the call without it
    direct, m = _direct(blurred, tiny_prior, "dmplug", 0, early_stop="wmv", **params)
    assert torch.equal(x, direct.x)
    assert (out / "trace_0.png").is_file() and (out / "trace_1.png").is_file()
    assert len(info["oracle_psnr"]) == len(info["picked_iteration"]) == 2
    assert all(o >= p - 1e-3 for o, p in zip(info["oracle_psnr"], info["psnr"], strict=True))
    assert info["nfe"] == direct.nfe > 0


@pytest.mark.assets
def test_a_solver_refusing_the_operator_exits_1_and_writes_nothing(tmp_path, tiny_prior, capsys):
    rotated = _measure(tmp_path / "rot", "rotation-blur")
    code = main(["solve", str(rotated), "--solver", "ddrm", "--prior", str(tiny_prior),
                 "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "'ddrm' needs" in err and "SVD" in err
    assert _nothing_written(tmp_path, "out")


@pytest.mark.assets
def test_an_unknown_solver_lists_the_known_ones(tmp_path, tiny_prior, blurred, capsys):
    code = main(["solve", str(blurred), "--solver", "dpss", "--prior", str(tiny_prior),
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "dpss" in err
    assert all(name in err for name in ("dps", "ddrm", "pigdm", "dmplug", "admm-pnp"))
    assert _nothing_written(tmp_path, "out")


def test_a_measurement_of_another_domain_is_refused(tmp_path, tiny_prior, capsys):
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    rgb = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert main(["measure", str(tmp_path / "rgb.png"), "--channels", "3", "--op",
                 "gaussian-blur", "-o", str(tmp_path / "m")]) == 0
    code = main(["solve", str(tmp_path / "m"), "--solver", "ddrm", "--prior", str(tiny_prior),
                 "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "(3, 32, 32)" in err and "(1, 32, 32)" in err and "domain" in err
    assert _nothing_written(tmp_path, "out")


@pytest.mark.assets
def test_solve_preset_fills_in_tuned_values_under_explicit_ones(tmp_path, tiny_prior, blurred):
    out = tmp_path / "tuned"
    assert main(["solve", str(blurred), "--solver", "ddrm", "--prior", str(tiny_prior),
                 "--preset", "tuned32", "-p", "steps=3", "-o", str(out), "--no-progress"]) == 0
    info = json.loads((out / "metrics.json").read_text())
    assert info["preset"] == "tuned32" and info["params"] == {"steps": 3, "eta": 1.0}
    direct, _ = _direct(blurred, tiny_prior, "ddrm", 0, steps=3, eta=1.0)
    assert torch.equal(load_file(str(out / "result.safetensors"))["x"], direct.x)
    # a checkpoint of the user's own: "auto" keeps the paper's defaults
    plain = tmp_path / "plain"
    assert main(["solve", str(blurred), "--solver", "ddrm", "--prior", str(tiny_prior),
                 "-p", "steps=3", "-o", str(plain), "--no-progress"]) == 0
    info = json.loads((plain / "metrics.json").read_text())
    assert info["preset"] is None and info["params"] == {"steps": 3}
    direct, _ = _direct(blurred, tiny_prior, "ddrm", 0, steps=3)
    assert torch.equal(load_file(str(plain / "result.safetensors"))["x"], direct.x)
