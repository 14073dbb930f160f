"""The input side of ``diffinv solve`` (issue 36, "no silent wrong results, no tracebacks"):
image files, measurement records and their truth, the files a solver is pointed to, solver
parameters, and what a solver may see. Every bad input is refused with one clear line (exit code 1
on the command line, a :class:`DiffinvError` in Python) before any solving, and writes nothing.
One section per numbered item of the issue's input part."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffinv.cli import main
from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError
from diffinv.physics import load_measurement, measure, save_measurement
from diffinv.solvers.base import Solver
from helpers import refused, tree

PRIORS = Path(__file__).resolve().parent.parent / "src" / "diffinv" / "priors"


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture
def no_solving(monkeypatch):
    """A refusal must come before the solver runs: running one fails the test."""

    def solved(*args, **kwargs):
        raise AssertionError("solved before checking the input")

    monkeypatch.setattr(Solver, "__call__", solved)


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def record(folder: Path, op: str = "motion-blur", n: int = 2, size: int = 16,
           noise: str = "gaussian:0.05") -> Path:
    return save_measurement(measure(_images(n, size), op, noise, 0), folder)


def edit_tensors(folder: Path, file: str, change) -> None:
    """Rewrite ``folder/file`` (safetensors) with ``change(tensors)`` applied."""
    tensors = load_file(str(folder / file))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / file))


def solve_refused(m: Path, tmp_path: Path, capsys, *extra: str) -> str:
    before = tree(tmp_path)
    err = refused(["solve", m, "--solver", "ddrm", "--prior", "fashion32", "-o",
                   tmp_path / "out", *extra], capsys)
    assert tree(tmp_path) == before
    return err


# -------------------------------------------------------------------- 1. 16-bit image files
def _ramp16(path: Path) -> np.ndarray:
    arr = np.array([[0, 16384, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow's 16-bit gray modes: I;16 or I
    return arr


def test_a_16_bit_png_is_read_at_its_own_scale(tmp_path):
    from diffinv.data.images import read_image

    arr = _ramp16(tmp_path / "ramp16.png")
    x = read_image(tmp_path / "ramp16.png")
    assert x.dtype == torch.float32 and x.shape == (1, 1, 4, 4)
    want = torch.from_numpy(arr.astype(np.float64) / 65535 * 2 - 1).float()
    torch.testing.assert_close(x[0, 0], want, atol=1e-6, rtol=0)  # not saturated to white
    rgb = read_image(tmp_path / "ramp16.png", channels=3)
    assert rgb.shape == (1, 3, 4, 4) and torch.equal(rgb[0, 0], x[0, 0]) and torch.equal(rgb[0, 2],
                                                                                          x[0, 0])
    small = read_image(tmp_path / "ramp16.png", size=2)  # resized in floating point
    assert small.shape == (1, 1, 2, 2) and small.min() >= -1 and small.max() <= 1
    assert small[0, 0, :, 0].mean() < 0 < small[0, 0, :, 1].mean()


def test_measure_of_a_16_bit_png_keeps_its_values(tmp_path, capsys):
    arr = _ramp16(tmp_path / "ramp16.png")
    assert main(["measure", str(tmp_path / "ramp16.png"), "--op", "identity", "--noise", "none",
                 "-o", str(tmp_path / "m")]) == 0
    x = load_measurement(tmp_path / "m").x
    assert abs(float(x.mean()) - float((arr / 65535 * 2 - 1).mean())) < 1e-5


def test_a_folder_given_as_an_image_is_called_a_folder(tmp_path, capsys):
    from diffinv.data.images import read_image

    record(tmp_path / "m")
    with pytest.raises(DiffinvError, match="is a folder, not an image file"):
        read_image(tmp_path / "m")
    before = tree(tmp_path)
    err = refused(["measure", tmp_path / "m", "--op", "identity", "-o", tmp_path / "out"], capsys)
    assert "is a folder, not an image file" in err and "does not exist" not in err
    assert tree(tmp_path) == before


# -------------------------------------------------------- 2. per-image parameters and truth
def test_one_kernel_for_two_images_is_refused_on_load(tmp_path, capsys, no_solving):
    m = record(tmp_path / "m")
    edit_tensors(m, "measurement.safetensors",
                 lambda t: t.update({"param.kernel": t["param.kernel"][:1]}))
    with pytest.raises(IntegrityError, match=r"'kernel'.*1 image.*2 images"):
        load_measurement(m)
    err = solve_refused(m, tmp_path, capsys)
    assert "one per image" in err


def test_a_hidden_parameter_for_the_wrong_batch_is_refused_too(tmp_path):
    m = record(tmp_path / "m", op="blind-gaussian-blur")
    edit_tensors(m, "truth.safetensors", lambda t: t.update({"true.std": t["true.std"][:1]}))
    with pytest.raises(IntegrityError, match=r"'std'.*1 image.*2 images"):
        load_measurement(m)
    assert load_measurement(m, truth=False).true_params == {}  # the solver's part is intact


def test_a_kernel_of_another_size_than_the_spec_is_refused(tmp_path, capsys, no_solving):
    m = record(tmp_path / "m")
    edit_tensors(m, "measurement.safetensors",
                 lambda t: t.update({"param.kernel": torch.full((2, 5, 5), 1 / 25)}))
    with pytest.raises(IntegrityError, match=r"5x5.*size 9"):
        load_measurement(m)
    solve_refused(m, tmp_path, capsys)
    with pytest.raises(DiffinvError, match=r"5x5.*size 9"):
        measure(_images(2), "motion-blur", "none", 0, params={"kernel": torch.full((2, 5, 5),
                                                                                  1 / 25)})


def test_a_shared_kernel_given_to_measure_is_stored_per_image(tmp_path):
    k = torch.full((9, 9), 1 / 81)
    m = measure(_images(2), "motion-blur", "none", 0, params={"kernel": k})
    assert m.params["kernel"].shape == (2, 9, 9)
    back = load_measurement(save_measurement(m, tmp_path / "m"))
    assert torch.equal(back.params["kernel"], k.expand(2, 9, 9))


def test_a_truth_file_without_x_is_refused(tmp_path, capsys, no_solving):
    m = record(tmp_path / "m")
    save_file({"junk": torch.zeros(1)}, str(m / "truth.safetensors"))
    with pytest.raises(IntegrityError, match="holds no truth image 'x'"):
        load_measurement(m)
    assert load_measurement(m, truth=False).x is None
    err = solve_refused(m, tmp_path, capsys)
    assert "hidden_truth" in err  # how to use the record without it


@pytest.mark.parametrize("case, message", [
    ("0-255", r"x / 127\.5 - 1"),
    ("nan", "NaN"),
    ("shape", r"truth image x .*\(2, 1, 8, 8\).*\(2, 1, 16, 16\)"),
    ("batch", r"truth image x .*3 images.*2"),
    ("int", "floating-point"),
])
def test_a_bad_truth_is_refused_on_load_with_user_facing_names(tmp_path, capsys, no_solving,
                                                               case, message):
    m = record(tmp_path / "m")
    change = {
        "0-255": lambda t: t.update({"x": (t["x"] + 1) * 127.5}),
        "nan": lambda t: t["x"].view(-1)[3].fill_(float("nan")),
        "shape": lambda t: t.update({"x": t["x"][..., :8, :8]}),
        "batch": lambda t: t.update({"x": torch.cat([t["x"], t["x"][:1]])}),
        "int": lambda t: t.update({"x": t["x"].round().to(torch.int64)}),
    }[case]
    edit_tensors(m, "truth.safetensors", change)
    with pytest.raises(DiffinvError, match=message) as info:
        load_measurement(m)
    assert "ref" not in str(info.value).split() and "truth" in str(info.value)
    err = solve_refused(m, tmp_path, capsys)
    assert "truth" in err and "'ref'" not in err


# ------------------------------------------------------------------------------ 3. dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_other_float_dtypes_are_read_as_float32(tmp_path, dtype):
    m = record(tmp_path / "m")
    original = load_measurement(m)

    def cast(t):
        for k in t:
            t[k] = t[k].to(dtype)

    edit_tensors(m, "measurement.safetensors", cast)
    edit_tensors(m, "truth.safetensors", cast)
    back = load_measurement(m)
    for a, b in ((back.y, original.y), (back.x, original.x),
                 (back.params["kernel"], original.params["kernel"])):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.to(dtype).float(), atol=0, rtol=0)


def test_a_float64_record_is_solved_like_a_float32_one(tmp_path, capsys):
    m = record(tmp_path / "m", op="gaussian-blur", n=1, size=32)
    edit_tensors(m, "measurement.safetensors", lambda t: t.update({"y": t["y"].double()}))
    spec = json.loads((m / "spec.json").read_text())
    spec["dtype"] = "float64"
    (m / "spec.json").write_text(json.dumps(spec))
    assert main(["solve", str(m), "--solver", "ddrm", "-p", "steps=2", "--prior", "fashion32",
                 "-o", str(tmp_path / "out"), "--no-progress"]) == 0, capsys.readouterr().err
    assert load_file(str(tmp_path / "out" / "result.safetensors"))["x"].dtype == torch.float32


def test_an_integer_measurement_is_refused(tmp_path, capsys, no_solving):
    m = record(tmp_path / "m")
    edit_tensors(m, "measurement.safetensors",
                 lambda t: t.update({"y": (t["y"] * 100).round().to(torch.int32)}))
    with pytest.raises(IntegrityError, match="y is int32.*floating-point"):
        load_measurement(m)
    solve_refused(m, tmp_path, capsys)


def test_a_prior_config_holding_a_list_is_refused(tmp_path, capsys):
    from diffinv import load_prior

    shutil.copy(PRIORS / "kernels9.safetensors", tmp_path / "p.safetensors")
    (tmp_path / "p.json").write_text("[1, 2]")
    with pytest.raises(IntegrityError, match="does not hold a JSON object"):
        load_prior(tmp_path / "p.safetensors")
    before = tree(tmp_path)
    err = refused(["sample", "--prior", tmp_path / "p.safetensors", "-o", tmp_path / "s.png"],
                  capsys)
    assert "does not hold a JSON object" in err and tree(tmp_path) == before


def test_an_adm_config_with_a_bad_value_is_refused(tmp_path):
    from diffinv.diffusion.zoo import adm_config

    with pytest.raises(IntegrityError, match="in_channels"):
        adm_config({"adm": {"in_channels": "three"}})


# ---------------------------------------------------------------- 4. parameters and files
@pytest.mark.parametrize("key, message", [("preset", "--preset"), ("operator", "measurement"),
                                          ("name", "--solver")])
def test_reserved_solver_parameters_are_refused(tmp_path, capsys, no_solving, key, message):
    m = record(tmp_path / "m")
    err = solve_refused(m, tmp_path, capsys, "-p", f"{key}=x")
    assert f"{key!r}" in err and message in err and "multiple values" not in err


def test_make_solver_refuses_name_as_a_parameter():
    from diffinv.solvers import make_solver

    with pytest.raises(DiffinvError, match="no parameter 'name'"):
        make_solver("dps", name="x")


def test_a_prior_given_as_supervised_weights_is_refused(tmp_path, capsys, monkeypatch):
    from diffinv.solvers.supervised_unet import load_deblur_net

    with pytest.raises(IntegrityError, match="not a supervised deblurring network"):
        load_deblur_net(PRIORS / "fashion32.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "w.json").write_text("[]")
    with pytest.raises(IntegrityError, match="not a supervised deblurring network"):
        load_deblur_net(tmp_path / "w.safetensors")
    m = record(tmp_path / "m", op="blind-motion-blur", n=1, size=32)
    err = solve_refused(m, tmp_path, capsys, "--solver", "supervised-unet", "-p",
                        f"weights={PRIORS / 'fashion32.safetensors'}")
    assert "not a supervised deblurring network" in err


def test_the_demo_refuses_a_prior_that_is_not_an_image_prior(tmp_path, capsys):
    err = refused(["demo", "--prior", "kernels9", "-o", tmp_path / "demo"], capsys)
    assert "kernels9" in err and "image prior" in err
    assert tree(tmp_path) == set()


@pytest.fixture
def blur32(tmp_path) -> Path:
    return record(tmp_path / "gb", op="gaussian-blur", n=1, size=32)


def test_a_davi_generator_without_its_card_is_not_said_to_be_missing(tmp_path, blur32, capsys):
    from diffinv.solvers.davi import generators_dir, read_card

    gen = tmp_path / "gen.safetensors"
    shutil.copy(generators_dir() / "davi-fashion32-gaussian-blur.safetensors", gen)
    with pytest.raises(DiffinvError, match="has no card gen.json beside it") as info:
        read_card(gen)
    assert "does not exist" not in str(info.value)
    err = solve_refused(blur32, tmp_path, capsys, "--solver", "davi", "-p", f"generator={gen}")
    assert "has no card gen.json" in err
    with pytest.raises(DiffinvError, match="does not exist"):
        read_card(tmp_path / "none.safetensors")
    (tmp_path / "list.safetensors").write_bytes(b"")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(IntegrityError, match="does not hold a JSON object"):
        read_card(tmp_path / "list.safetensors")


def test_a_davi_generator_may_be_named_by_its_card_or_its_folder(tmp_path):
    from diffinv.solvers.davi import generators_dir, read_card

    weights = generators_dir() / "davi-fashion32-gaussian-blur.safetensors"
    assert read_card(weights.with_suffix(".json"))["path"] == str(weights)
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(weights, folder)
    shutil.copy(weights.with_suffix(".json"), folder)
    assert read_card(folder)["path"] == str(folder / weights.name)
    shutil.copy(generators_dir() / "davi-fashion32-sr-avgpool.json", folder)
    shutil.copy(generators_dir() / "davi-fashion32-sr-avgpool.safetensors", folder)
    with pytest.raises(DiffinvError, match="holds 2 DAVI generators"):
        read_card(folder)


# ------------------------------------------------------------ 5. a solver never sees the truth
class _NoPrior:
    nfe = 0
    image_shape = (1, 16, 16)

    def reset_nfe(self) -> None:
        raise AssertionError("the solver started")


@pytest.mark.parametrize("op", ["motion-blur", "blind-gaussian-blur"])
def test_a_solver_refuses_a_measurement_carrying_the_truth(op):
    from diffinv.solvers import make_solver

    m = measure(_images(2), op, "gaussian:0.05", 0)
    solver = make_solver("dps", steps=2)
    with pytest.raises(DiffinvError, match=r"public\(\)"):
        solver(m.y, m, _NoPrior(), seed=0)
    with pytest.raises(DiffinvError, match="truth"):
        solver(m.y, SimpleNamespace(operator=op, x=None, true_params=dict(m.true_params) or
                                    {"kernel": torch.zeros(1)}), _NoPrior(), seed=0)
    with pytest.raises(AssertionError, match="the solver started"):  # the public copy passes
        solver(m.y, m.public(), _NoPrior(), seed=0)


def test_dmplug_refuses_the_truth_in_physics_but_takes_it_for_evaluation():
    from diffinv.solvers import make_solver

    m = measure(_images(1), "motion-blur", "gaussian:0.05", 0)
    solver = make_solver("dmplug", iterations=1)
    with pytest.raises(DiffinvError, match="truth"):
        solver(m.y, m, _NoPrior(), seed=0, truth=m.x)
    with pytest.raises(AssertionError, match="the solver started"):
        solver(m.y, m.public(), _NoPrior(), seed=0, truth=m.x)


# ------------------------------------------------------------------------------ 6. messages
def test_a_version_given_as_a_string_is_called_a_string(tmp_path, capsys, no_solving):
    m = record(tmp_path / "m")
    spec = json.loads((m / "spec.json").read_text())
    spec["version"] = "1"
    (m / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(IntegrityError, match="must be an integer, got the string '1'"):
        load_measurement(m)
    err = solve_refused(m, tmp_path, capsys)
    assert "this diffinv reads version 1" not in err
    spec["version"] = 2
    (m / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(IntegrityError, match="has format version 2; this diffinv reads version 1"):
        load_measurement(m)


def test_a_folder_that_is_not_a_measurement_says_what_it_lacks(tmp_path, capsys, no_solving):
    m = record(tmp_path / "m")
    (m / "spec.json").unlink()
    with pytest.raises(MissingAssetError, match="has no spec.json") as info:
        load_measurement(m)
    assert "does not exist" not in str(info.value)
    err = solve_refused(m, tmp_path, capsys)
    assert "has no spec.json" in err
    with pytest.raises(MissingAssetError, match="does not exist"):
        load_measurement(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MissingAssetError, match="is a file, not a measurement folder"):
        load_measurement(tmp_path / "file")


def test_random_bytes_are_not_called_pickled_code(tmp_path):
    from diffinv.fileio import load_tensors_only

    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(IntegrityError, match="neither a torch zip archive nor a pickle") as info:
        load_tensors_only(tmp_path / "random.pt")
    assert "run arbitrary code" not in str(info.value)
    with open(tmp_path / "path.pt", "wb") as f:  # a real pickle asking for a global
        pickle.dump({"w": Path("x")}, f, protocol=4)
    with pytest.raises(IntegrityError, match="pathlib.*could run arbitrary code"):
        load_tensors_only(tmp_path / "path.pt")
    torch.save({"w": Path("x")}, tmp_path / "zip.pt")
    with pytest.raises(IntegrityError, match="pathlib.*could run arbitrary code"):
        load_tensors_only(tmp_path / "zip.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors_only(tmp_path / "ok.pt")["w"], torch.ones(2))


def _help_lines(capsys) -> dict[str, str]:
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("  ") and parts and "[" in line:
            lines[parts[0]] = line
    return lines


def test_solve_help_says_what_each_solver_really_needs(capsys):
    lines = _help_lines(capsys)
    for name in ("blind-dps", "fastem", "gibbsddrm", "pan-l0", "selfdeblur", "supervised-unet"):
        assert "blind blur family" in lines[name], lines[name]
        assert "any" not in lines[name].split("]")[0], lines[name]
    assert "never reads the operator" in lines["cl-dps"].split("]")[0], lines["cl-dps"]
    assert "DAVI generator" in lines["davi"].split("]")[0], lines["davi"]
    for name in ("dmplug", "red-diff"):
        assert "blind" in lines[name].split("]")[0], lines[name]
    assert "known operator" in lines["dps"].split("]")[0], lines["dps"]
