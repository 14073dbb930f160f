"""The command line: help text, sampling, the demo, errors with exit code 1 and a clear message."""

import subprocess
import sys

import pytest
import torch

from diffinv.cli import COMMAND_MODULES, build_parser, main
from diffinv.diffusion.zoo import available_priors


def test_help_names_every_command_with_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for mod in COMMAND_MODULES:
        name = mod.rsplit(".", 1)[1].replace("_", "-")
        assert name in out, name
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert all(choice.help for choice in sub._choices_actions)


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "diffinv.cli", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("diffinv ")


@pytest.fixture(scope="module")
def toy_prior(tmp_path_factory):
    from conftest import make_tiny_prior

    return make_tiny_prior(tmp_path_factory.mktemp("cli"), size=16)


def test_sample_writes_a_grid_and_exact_tensor(tmp_path, toy_prior):
    from PIL import Image
    from safetensors.torch import load_file

    from diffinv import load_prior

    out = tmp_path / "grid.png"
    code = main(["sample", "--prior", str(toy_prior), "-n", "5", "--steps", "3", "--batch", "2",
                 "-o", str(out), "--tensor", str(tmp_path / "x.safetensors")])
    assert code == 0 and Image.open(out).size[0] > 16
    x = load_file(str(tmp_path / "x.safetensors"))["samples"]
    direct = load_prior(toy_prior).sample(5, seed=0, method="ddim", steps=3)
    assert torch.allclose(x, direct, atol=1e-6)  # batching by 2 changed nothing


def test_errors_exit_1_with_the_known_names(capsys):
    code = main(["sample", "--prior", "celeba256", "-n", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "unknown prior 'celeba256'" in err


@pytest.mark.skipif("fashion32" not in available_priors(), reason="embedded fashion32 not shipped")
def test_demo_runs_on_the_embedded_prior(tmp_path, capsys):
    import json

    # DDRM (100 steps in the tuned32 preset) keeps this fast; `make demo` runs DPS (1000 steps).
    assert main(["demo", "-o", str(tmp_path), "--solver", "ddrm", "-n", "2"]) == 0
    assert (tmp_path / "demo.png").is_file()
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["nfe"] == 100 and len(report["psnr"]) == 2 and report["preset"] == "tuned32"
    # the restoration is closer to the truth than the blurred, noisy measurement
    assert sum(report["psnr"]) > sum(report["psnr_of_y"])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["bench", "solve"])
def test_threads_option_sets_torch_threads_before_the_command(command, tmp_path, monkeypatch,
                                                              capsys):
    import torch

    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    target = str(tmp_path / "missing")  # the command then fails cleanly, after the option acts
    argv = [command, target + ".toml"] if command == "bench" else [command, target, "-o",
                                                                    str(tmp_path / "out")]
    assert main(argv + ["--threads", "1"]) == 1  # (more than the cores is capped: see
    assert seen == [1]                            # tests/test_resources_api.py)
    with pytest.raises(SystemExit) as e:
        main(argv + ["--threads", "0"])
    assert e.value.code == 2
    assert "must be an integer >= 1" in capsys.readouterr().err
