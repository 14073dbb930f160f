"""Bad input at the edges (issue 24): every case below is refused before any computation with one
clear message (exit code 1 on the command line, a :class:`DiffinvError` in Python, never a
traceback), and leaves no file or folder behind. One section per numbered item of the issue."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import diffinv.data
from diffinv.cli import build_parser, main
from diffinv.diffusion.prior import DiffusionPrior
from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError
from diffinv.solvers.base import Solver
from helpers import refused, tree


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture
def no_compute(monkeypatch):
    """Make every expensive step fail loudly: a refusal must come before any of them."""

    def computed(*args, **kwargs):
        raise AssertionError("computed before checking the input")

    monkeypatch.setattr(Solver, "__call__", computed)
    monkeypatch.setattr(DiffusionPrior, "sample", computed)
    monkeypatch.setattr(diffinv.data, "load_split", computed)


@pytest.fixture
def measurement(tmp_path) -> Path:
    from diffinv.physics import measure, save_measurement

    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return save_measurement(measure(x, "gaussian-blur", "gaussian:0.05", 0), tmp_path / "m")


@pytest.fixture
def image_file(tmp_path) -> Path:
    from diffinv.data.images import save_image

    return save_image(torch.zeros(1, 8, 8), tmp_path / "img.png")


# ------------------------------------------------------------------ 1. output locations first
@pytest.mark.parametrize("argv, message", [
    (["solve", "{m}", "-o", "{file}"], "is a file, not a folder"),
    (["solve", "{m}", "-o", "{file}", "--overwrite"], "--overwrite replaces a folder, never a file"),
    (["solve", "{m}", "-o", "{file}/sub"], "is a file"),
    (["solve", "{m}", "-o", "{locked}/out"], "cannot create"),
    (["demo", "-o", "{file}"], "is a file, not a folder"),
    (["demo", "-o", "{file}/sub/deeper"], "is a file"),
    (["demo", "-o", "{locked}/demo"], "cannot create"),
    (["sample", "-o", "{tmp}/x.txt"], "must end in .png"),
    (["sample", "-o", "{file}/grid.png"], "is a file"),
    (["sample", "-o", "{m}"], "is a folder, not a file"),
    (["sample", "-o", "{tmp}/grid.png", "--tensor", "{file}/x.safetensors"], "is a file"),
    (["sample", "-o", "{locked}/grid.png"], "cannot create"),
    (["measure", "{img}", "--op", "identity", "-o", "{file}"], "is a file, not a folder"),
    (["measure", "{img}", "--op", "identity", "-o", "{file}", "--overwrite"], "never a file"),
    (["measure", "{img}", "--op", "identity", "-o", "{locked}/m"], "cannot create"),
    (["train-prior", "--out", "{file}"], "is a file, not a folder"),
    (["train-prior", "--out", "{tmp}/run", "--export", "{file}/x"], "is a file"),
])
def test_output_locations_are_checked_before_any_work(tmp_path, measurement, image_file, unwritable,
                                                      no_compute, capsys, argv, message):
    file = tmp_path / "taken"
    file.write_text("not a folder\n")
    subs = {"m": measurement, "file": file, "locked": unwritable, "tmp": tmp_path, "img": image_file}
    before = tree(tmp_path)
    err = refused([a.format(**subs) for a in argv], capsys)
    assert message in err and len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before


def test_save_measurement_refuses_a_file_even_with_overwrite(tmp_path):
    from diffinv.physics import measure, save_measurement

    file = tmp_path / "taken"
    file.write_text("x")
    m = measure(torch.zeros(1, 1, 4, 4) - 0.5, "identity", "none", 0)
    with pytest.raises(DiffinvError, match="is a file, not a folder"):
        save_measurement(m, file, overwrite=True)
    assert tree(tmp_path) == {"taken"}


# ------------------------------------------------------------------------------ 2. no CUDA
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [["solve", "{m}", "-o", "{tmp}/out", "--device", "cuda"],
                                  ["sample", "-o", "{tmp}/g.png", "--device", "cuda:1"],
                                  ["train-prior", "--out", "{tmp}/run", "--device", "cuda"]])
def test_cuda_without_cuda_is_one_clear_line(tmp_path, measurement, no_compute, capsys, argv):
    before = tree(tmp_path)
    err = refused([a.format(m=measurement, tmp=tmp_path) for a in argv], capsys)
    assert "sees no CUDA device" in err and "--device cpu" in err
    assert tree(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_load_prior_on_cuda_without_cuda():
    from diffinv import load_prior

    with pytest.raises(DiffinvError, match="sees no CUDA device"):
        load_prior("fashion32", device="cuda")
    with pytest.raises(DiffinvError, match="'gpu7' is not a torch device"):
        load_prior("fashion32", device="gpu7")


# ------------------------------------------------------------------ 3. hand-edited records
def _edit(spec: dict, case: str):
    if case == "no config":
        del spec["config"]
    elif case == "missing tensor":
        spec["params"] = ["kernel"]
    elif case == "seed zero":
        spec["seed"] = "zero"
    elif case == "a list":
        return [spec]
    return spec


@pytest.mark.parametrize("case, message", [
    ("no config", "lacks 'config'"),
    ("missing tensor", "names the tensor 'param.kernel'"),
    ("seed zero", "'seed' must be an integer, got 'zero'"),
    ("a list", "does not hold a JSON object"),
])
def test_hand_edited_records_are_refused_on_load(measurement, tmp_path, capsys, case, message):
    from diffinv.physics import load_measurement

    spec_path = measurement / "spec.json"
    spec_path.write_text(json.dumps(_edit(json.loads(spec_path.read_text()), case)))
    with pytest.raises(IntegrityError, match=message):
        load_measurement(measurement)
    before = tree(tmp_path)
    err = refused(["solve", str(measurement), "--solver", "ddrm", "-o", str(tmp_path / "out")],
                  capsys)
    assert message.split("'")[0] in err and tree(tmp_path) == before


def test_a_missing_truth_file_is_reported_as_such(measurement, tmp_path, capsys):
    from diffinv.physics import load_measurement

    (measurement / "truth.safetensors").unlink()
    with pytest.raises(MissingAssetError, match="truth.safetensors.*is missing"):
        load_measurement(measurement)
    assert load_measurement(measurement, truth=False).x is None  # what a solver needs is there
    before = tree(tmp_path)
    err = refused(["solve", str(measurement), "--solver", "ddrm", "-o", str(tmp_path / "o")], capsys)
    assert "is missing" in err and tree(tmp_path) == before


# ------------------------------------------------------------------------------- 4. parsing
@pytest.mark.parametrize("sel, message", [("5-2", "empty range '5-2'"),
                                          ("-1", "'-1' is not an index"),
                                          ("3,", "'' is not an index"),
                                          ("1-x", "'1-x' is not an index")])
def test_bad_index_ranges_fail_before_loading(no_compute, sel, message):
    with pytest.raises(DiffinvError, match=message):
        diffinv.data.get_images(f"fashion32:test:{sel}")


def test_measure_size_zero_is_refused_by_the_parser(tmp_path, image_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["measure", str(image_file), "--op", "identity", "--size", "0", "-o",
              str(tmp_path / "m")])
    assert e.value.code == 2 and "must be an integer >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("param, message", [
    ("steps=abc", "parameter 'steps' of solver 'ddrm' must be an integer, got 'abc'"),
    ("steps=2.5", "must be an integer, got 2.5"),
    ("stpes=10", "solver 'ddrm' has no parameter 'stpes'; its parameters: eta, eta_b, spacing, "
                 "steps"),
])
def test_solver_parameters_are_checked(measurement, tmp_path, no_compute, capsys, param, message):
    err = refused(["solve", str(measurement), "--solver", "ddrm", "-p", param, "-o",
                   str(tmp_path / "out")], capsys)
    assert message in err and not (tmp_path / "out").exists()


def test_attention_at_a_resolution_the_network_lacks_is_refused(tmp_path):
    from diffinv.learn.trainer import TrainConfig, train_prior

    cfg = TrainConfig(out=str(tmp_path / "run"), steps=2, batch=2,
                      unet=dict(base_channels=8, channel_mults=[1, 2, 2], num_res_blocks=1,
                                attention_resolutions=[7]))
    with pytest.raises(DiffinvError, match=r"attention resolution 7 .* 32, 16, 8"):
        train_prior(cfg, data=torch.zeros(4, 1, 32, 32), progress=False)
    assert tree(tmp_path) == set()


# ------------------------------------------------------------------------- 5. Python API
def test_measure_checks_the_truth_is_in_minus_one_one():
    from diffinv.errors import RangeWarning
    from diffinv.physics import measure

    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DiffinvError, match=r"x / 127\.5 - 1"):
        measure(x * 255, "gaussian-blur", "gaussian:0.05", 0)
    with pytest.warns(RangeWarning, match=r"2 \* x - 1"):
        measure(x, "gaussian-blur", "gaussian:0.05", 0)


def test_solvers_refuse_a_measurement_of_0_255_images(tiny_prior):
    from diffinv import load_prior
    from diffinv.physics import measure
    from diffinv.solvers import make_solver

    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    m = measure(x, "gaussian-blur", "gaussian:0.05", 0)
    prior = load_prior(tiny_prior)
    for name in ("ddrm", "dps", "dmplug"):
        with pytest.raises(DiffinvError, match=r"mean 1[0-9]{2}\..*\[0, 255\]"):
            make_solver(name)((m.y + 1) * 127.5, m.public(), prior)
    with pytest.raises(DiffinvError, match="prior must be a DiffusionPrior.*load_prior"):
        make_solver("ddrm")(m.y, m.public(), "fashion32")


@pytest.mark.parametrize("call, message", [
    (lambda p: p.sample(1, steps=0), "steps must be an integer >= 1, got 0"),
    (lambda p: p.sample(1, steps=2.5), "steps must be an integer >= 1, got 2.5"),
    (lambda p: p.sample(0), "n must be an integer >= 1, got 0"),
    (lambda p: p.sample(1, steps=2, eta=-1.0, method="ddim"), "eta must lie in"),
])
def test_prior_sample_checks_its_arguments(tiny_prior, call, message):
    from diffinv import load_prior

    with pytest.raises(DiffinvError, match=message):
        call(load_prior(tiny_prior))


# --------------------------------------------------------------- 6. bench: check, then write
def test_bench_checks_solver_against_operator_before_writing(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import diffinv
    from diffinv.bench import BenchConfigError, run_benchmark
    from diffinv.data import ImageSet

    monkeypatch.setattr(diffinv.data, "load_split", lambda ds, split: ImageSet(
        ds, split, torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long)))
    monkeypatch.setattr(diffinv, "load_prior", lambda *a, **k: SimpleNamespace(
        sha256="5e" * 32, domain="fashion32", name="fake", precision="fp32"))
    (tmp_path / "t.toml").write_text(
        'methods = ["dps", "ddrm"]\n'
        'tasks = [{name = "rot", operator = "rotation-blur", noise = "gaussian:0.05"}]\n'
        'priors = ["fashion32"]\nmetrics = ["psnr"]\n'
        '[run]\nname = "t"\nseed = 0\ndataset = "fashion32:test"\nn_images = 1\n'
        'output = "out"\n')
    with pytest.raises(BenchConfigError, match="method 'ddrm' on task 'rot': solver 'ddrm' "
                                               "needs an SVD"):
        run_benchmark(tmp_path / "t.toml", progress=False)
    assert tree(tmp_path) == {"t.toml"}


# ------------------------------------------------------------------------------ 7. messages
def test_a_refused_pickle_says_so_and_nothing_more(tmp_path):
    from diffinv import load_prior
    from diffinv.learn.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"model": Path("x")}, path)  # a pickled object that is not a tensor
    for load in (load_prior, load_checkpoint):
        with pytest.raises(IntegrityError) as e:
            load(path)
        msg = str(e.value)
        assert "refused" in msg and "pathlib" in msg and "run arbitrary code" in msg
        assert "weights_only" not in msg and "False" not in msg and "\n" not in msg
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(path.read_bytes()[:40])
    for p in (raw, trunc):
        with pytest.raises(IntegrityError, match="refused|not a readable") as e:
            load_prior(p)
        assert "weights_only" not in str(e.value)


def test_an_unrelated_json_beside_a_training_checkpoint_is_not_an_adm_config(tiny_prior, tmp_path):
    from diffinv import load_prior

    ckpt = tiny_prior.parent.parent / "run" / "checkpoint.pt"
    mine = tmp_path / "checkpoint.pt"
    shutil.copy(ckpt, mine)
    (tmp_path / "checkpoint.json").write_text(json.dumps({"notes": "my run", "lr": 1e-3}))
    assert load_prior(mine).image_shape == (1, 32, 32)


# ---------------------------------------------------------------------------------- 8. help
def _subparsers():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, p in _subparsers().items() for a in p._actions
               if not a.help and a.dest != "help"]
    assert missing == []


def test_help_texts_say_what_the_defaults_do():
    helps = {name: p.format_help() for name, p in _subparsers().items()}
    assert "about a minute" in helps["demo"]
    assert "gaussian:SIGMA" in helps["measure"] and "poisson:LAMBDA" in helps["demo"]
    assert "comma-separated" in helps["train-prior"]
    lines = helps["solve"].splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("ddrm"))
    assert "20 SVD-domain steps" in lines[at] and "tuned32: steps=100" in lines[at + 1]
    ilvr = next(line for line in helps["solve"].splitlines() if line.strip().startswith("ilvr"))
    assert "sr-avgpool" in ilvr.split("]")[0]
    assert "[run]" in helps["bench"] and "methods = [" in helps["bench"]



def test_the_task_file_format_in_bench_help_is_a_valid_task_file(tmp_path):
    import sys
    import textwrap

    from diffinv.bench.plan import load_plan
    from diffinv.bench.spec import TASK_FILE_FORMAT

    toml = textwrap.dedent("\n".join(line for line in TASK_FILE_FORMAT.splitlines()
                                      if line.startswith("  ")))
    (tmp_path / "t.toml").write_text(toml)
    if sys.version_info >= (3, 11):
        plan = load_plan(tmp_path / "t.toml")
        assert plan.name == "linear" and len(plan.cells) == 2
