"""The trainer commands lose nothing and raise no traceback (issue 36): export names that would
escape their folder, hyper-parameters out of range, outputs that cannot be written and foreign
checkpoints are refused before any data loads and without leaving a file behind; a run whose
weights become non-finite stops without saving them; the help says what ``--export`` is.

Every command runs in-process on tiny networks, with the data sets replaced by 8 random 16x16
images (``fake_data``), so that each test takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffinv.cli import build_parser, main
from diffinv.data.datasets import ImageSet

SIZE = 16
TRAINERS = ("train-prior", "train-likelihood", "train-davi", "train-deblur-net")


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def tiny_prior_16(tmp_path_factory) -> Path:
    """A tiny 16x16 prior (the teacher of train-davi)."""
    from conftest import make_tiny_prior

    return make_tiny_prior(tmp_path_factory.mktemp("teacher"), size=SIZE)


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Replace every data split by 8 random 16x16 images; records each data set and prior load,
    so a test can tell that a refusal came before anything was loaded."""
    import diffinv.diffusion.zoo as zoo

    calls: list[str] = []

    def load_split(dataset: str, split: str) -> ImageSet:
        calls.append(f"data {dataset}:{split}")
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8, 1, SIZE, SIZE, generator=g) * 2 - 1
        return ImageSet(dataset, split, x, torch.zeros(8, dtype=torch.long))

    real_load_prior = zoo.load_prior

    def load_prior(*args, **kwargs):
        calls.append("prior")
        return real_load_prior(*args, **kwargs)

    monkeypatch.setattr("diffinv.data.load_split", load_split)
    monkeypatch.setattr(zoo, "load_prior", load_prior)
    return calls


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """A folder holding a user's file (``user.txt``) next to which the commands write."""
    sb = tmp_path / "sb"
    sb.mkdir()
    (sb / "user.txt").write_text("mine\n")
    return sb


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``diffinv ARGV`` in-process: (exit code, stderr); argparse's usage errors exit with 2."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def tiny_args(cmd: str, prior: Path | None = None) -> list[str]:
    """Options that make ``cmd`` train a tiny network on the CPU."""
    common = ["--no-progress", "--device", "cpu", "--warmup", "1", "--batch", "2"]
    if cmd == "train-prior":
        return common + ["--base-channels", "8", "--channel-mults", "1,2", "--num-res-blocks",
                         "1", "--attention", ""]
    if cmd == "train-likelihood":
        return common + ["--width", "8", "--blocks", "1,1,1", "--dim", "8", "--positives", "1",
                         "--queue", "4"]
    if cmd == "train-deblur-net":
        return common + ["--base", "8", "--mults", "1,2", "--blocks", "1"]
    assert cmd == "train-davi"
    return ["--no-progress", "--device", "cpu", "--batch", "2", "--task", "gaussian-blur",
            "--prior", str(prior) if prior else "fashion32"]


def assert_refused(rc: int, err: str, code: int, *fragments: str) -> None:
    assert rc == code, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err


# ------------------------------------------------------------- 1. export names stay in place
@pytest.mark.parametrize("name", ["../../escaped", "a/b", "", ".hidden", "..", "a\\b"])
def test_deblur_export_name_that_leaves_the_folder_is_refused_before_training(
        name, sandbox, loads, capsys):
    before = listing(sandbox.parent)
    rc, err = run_cli(["train-deblur-net", *tiny_args("train-deblur-net"), "--steps", "1",
                       "--out", str(sandbox / "run"), "--export", str(sandbox / "deep" / "tn4x"),
                       "--name", name], capsys)
    assert_refused(rc, err, 2, "--name")
    assert listing(sandbox.parent) == before
    assert loads == []


def test_deblur_export_with_a_plain_name_writes_into_the_export_folder(sandbox, loads, capsys):
    rc, err = run_cli(["train-deblur-net", *tiny_args("train-deblur-net"), "--steps", "1",
                       "--out", str(sandbox / "run"), "--export", str(sandbox / "tn4x"),
                       "--name", "net-1"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (sandbox / "tn4x").iterdir()) == ["net-1.json",
                                                                    "net-1.safetensors"]


def test_davi_export_of_a_prior_file_is_named_by_its_stem(sandbox, loads, tiny_prior_16, capsys):
    """The default name davi-PRIOR-OPERATOR took a prior file's whole path, so that the export
    went to a missing subfolder after the whole training."""
    rc, err = run_cli(["train-davi", *tiny_args("train-davi", tiny_prior_16), "--steps", "1",
                       "--out", str(sandbox / "run"), "--export", str(sandbox / "gen")], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (sandbox / "gen").iterdir()) == [
        "davi-toy-gaussian-blur.json", "davi-toy-gaussian-blur.safetensors"]


def test_library_exports_refuse_names_with_paths(tmp_path):
    from diffinv.errors import DiffinvError
    from diffinv.learn.davi_trainer import export_davi
    from diffinv.learn.deblur_trainer import export_deblur_net
    from diffinv.learn.trainer import export_prior

    missing = tmp_path / "no-checkpoint.pt"  # the name is checked before the checkpoint loads
    for export in (export_prior, export_deblur_net, export_davi):
        with pytest.raises(DiffinvError, match="name"):
            export(missing, tmp_path / "out", "../escaped")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -------------------------------------------------------------- 2. hyper-parameters in range
BAD_OPTIONS = [
    ("train-likelihood", ["--lr", "nan"], "--lr"),
    ("train-likelihood", ["--sigma-max", "-0.1"], "--sigma-max"),
    ("train-likelihood", ["--tau", "0"], "--tau"),
    ("train-likelihood", ["--momentum", "1"], "--momentum"),
    ("train-likelihood", ["--key-abar-min", "1"], "--key-abar-min"),
    ("train-likelihood", ["--intensity-weight", "inf"], "--intensity-weight"),
    ("train-likelihood", ["--batch", "0"], "--batch"),
    ("train-likelihood", ["--blocks", ""], "--blocks"),
    ("train-likelihood", ["--max-steps-this-run", "0"], "--max-steps-this-run"),
    ("train-prior", ["--max-steps-this-run", "0"], "--max-steps-this-run"),
    ("train-prior", ["--ema-decay", "2"], "--ema-decay"),
    ("train-prior", ["--dropout", "1.5"], "--dropout"),
    ("train-prior", ["--lr", "inf"], "--lr"),
    ("train-prior", ["--lr", "-0.001"], "--lr"),
    ("train-prior", ["--warmup", "-1"], "--warmup"),
    ("train-prior", ["--decay-start", "-1"], "--decay-start"),
    ("train-prior", ["--channel-mults", ""], "--channel-mults"),
    ("train-prior", ["--channel-mults", "1,0"], "--channel-mults"),
    ("train-prior", ["--threads", "0"], "--threads"),
    ("train-davi", ["--sigma", "-0.05"], "--sigma"),
    ("train-davi", ["--perturb-h", "-1"], "--perturb-h"),
    ("train-davi", ["--lr", "nan"], "--lr"),
    ("train-davi", ["--s-lr", "0"], "--s-lr"),
    ("train-davi", ["--ema-decay", "1"], "--ema-decay"),
    ("train-davi", ["--weight-con", "nan"], "--weight-con"),
    ("train-davi", ["--steps", "0"], "--steps"),
    ("train-davi", ["--t-ikl", "0"], "--t-ikl"),
    ("train-deblur-net", ["--base", "0"], "--base"),
    ("train-deblur-net", ["--mults", ""], "--mults"),
    ("train-deblur-net", ["--blocks", "0"], "--blocks"),
    ("train-deblur-net", ["--sigma-max", "nan"], "--sigma-max"),
    ("train-deblur-net", ["--ema-decay", "-0.5"], "--ema-decay"),
    ("train-deblur-net", ["--warmup", "-5"], "--warmup"),
]


@pytest.mark.parametrize(("cmd", "bad", "option"), BAD_OPTIONS,
                         ids=[f"{c}{''.join(b)}" for c, b, _ in BAD_OPTIONS])
def test_bad_hyper_parameter_is_a_usage_error_before_anything(cmd, bad, option, sandbox, loads,
                                                               capsys):
    before = listing(sandbox)
    rc, err = run_cli([cmd, *tiny_args(cmd), "--steps", "2", "--out", str(sandbox / "run"), *bad],
                      capsys)
    assert_refused(rc, err, 2, f"argument {option}")
    assert listing(sandbox) == before  # no run folder, config.json or train_log.jsonl
    assert loads == []


def test_decay_start_beyond_the_run_is_refused_before_anything(sandbox, loads, capsys):
    before = listing(sandbox)
    rc, err = run_cli(["train-prior", *tiny_args("train-prior"), "--steps", "2", "--lr-schedule",
                       "cosine", "--decay-start", "2", "--out", str(sandbox / "run")], capsys)
    assert_refused(rc, err, 1, "decay_start")
    assert listing(sandbox) == before
    assert loads == []


@pytest.mark.parametrize(("make", "field", "value"), [
    ("prior", "lr", float("nan")), ("prior", "ema_decay", 1.0), ("prior", "grad_clip", -1.0),
    ("likelihood", "lr", float("nan")), ("likelihood", "sigma_max", -0.1),
    ("likelihood", "tau", float("inf")), ("deblur", "ema_decay", 2.0),
    ("deblur", "lr", float("nan")), ("davi", "sigma", -0.05), ("davi", "perturb_h", -1.0),
    ("davi", "ema_decay", 1.5), ("davi", "lr", float("nan"))])
def test_library_configs_refuse_non_finite_and_out_of_range_values(make, field, value):
    from diffinv.errors import DiffinvError
    from diffinv.learn.davi_trainer import DaviConfig
    from diffinv.learn.deblur_trainer import DeblurTrainConfig
    from diffinv.learn.moco import LikelihoodConfig
    from diffinv.learn.trainer import TrainConfig

    cls = {"prior": TrainConfig, "likelihood": LikelihoodConfig, "deblur": DeblurTrainConfig,
           "davi": DaviConfig}[make]
    cfg = cls(**{field: value})
    with pytest.raises(DiffinvError, match=field):
        cfg.resolved() if make == "davi" else cfg.validate()


def test_library_trainer_refuses_zero_steps_this_run(sandbox):
    from diffinv.errors import DiffinvError
    from diffinv.learn.trainer import TrainConfig, train_prior

    cfg = TrainConfig(out=str(sandbox / "run"), steps=2, batch=2)
    with pytest.raises(DiffinvError, match="max_steps_this_run"):
        train_prior(cfg, data=torch.zeros(4, 1, SIZE, SIZE), max_steps_this_run=0)
    assert not (sandbox / "run").exists()


def _poison_optimiser_step(monkeypatch, cls: type, at_call: int) -> None:
    """Make the ``at_call``-th step of optimiser class ``cls`` leave a NaN in its first parameter
    (a diverging run, whatever the hyper-parameters)."""
    real = cls.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == at_call:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(cls, "step", step)


def _all_finite(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


# optimiser, optimiser steps per training step
_OPTIMISERS = {"train-prior": (torch.optim.AdamW, 1), "train-likelihood": (torch.optim.SGD, 1),
               "train-deblur-net": (torch.optim.AdamW, 1), "train-davi": (torch.optim.AdamW, 2)}


@pytest.mark.parametrize("cmd", TRAINERS)
def test_weights_that_become_non_finite_are_never_saved(cmd, sandbox, loads, monkeypatch,
                                                       tiny_prior_16, capsys):
    cls, per_step = _OPTIMISERS[cmd]
    _poison_optimiser_step(monkeypatch, cls, at_call=per_step + 1)  # during the second step
    out = sandbox / "run"
    rc, err = run_cli([cmd, *tiny_args(cmd, tiny_prior_16), "--steps", "3", "--ckpt-every", "1",
                       "--out", str(out)], capsys)
    assert_refused(rc, err, 1, "non-finite", "(step 1)")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert int(state["step"]) == 1  # the last good state, not overwritten by the NaN weights
    assert _all_finite(state)


@pytest.mark.parametrize("cmd", ["train-prior", "train-deblur-net"])
def test_non_finite_weights_in_the_first_step_write_no_checkpoint(cmd, sandbox, loads,
                                                                  monkeypatch, capsys):
    _poison_optimiser_step(monkeypatch, torch.optim.AdamW, at_call=1)
    out = sandbox / "run"
    rc, err = run_cli([cmd, *tiny_args(cmd), "--steps", "1", "--out", str(out)], capsys)
    assert_refused(rc, err, 1, "non-finite", "no checkpoint")
    assert not (out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------- 3. outputs first
@pytest.mark.parametrize("cmd", TRAINERS)
@pytest.mark.parametrize(("where", "fragment"), [("user.txt", "is a file"),
                                                 ("user.txt/run", "user.txt is a file")])
def test_out_that_cannot_be_a_folder_is_refused_before_anything(cmd, where, fragment, sandbox,
                                                                loads, tiny_prior_16, capsys):
    before = listing(sandbox)
    rc, err = run_cli([cmd, *tiny_args(cmd, tiny_prior_16), "--steps", "1",
                       "--out", str(sandbox / where)], capsys)
    assert_refused(rc, err, 1, fragment)
    assert listing(sandbox) == before
    assert loads == []


@pytest.mark.parametrize(("cmd", "export", "fragment"), [
    ("train-davi", "user.txt", "is a file"),
    ("train-deblur-net", "user.txt", "is a file"),
    ("train-deblur-net", "user.txt/exp", "user.txt is a file"),
    ("train-likelihood", "user.txt/enc", "user.txt is a file"),
    ("train-likelihood", "taken", "is a folder"),  # taken.safetensors is a folder
])
def test_export_that_cannot_be_written_is_refused_before_training(cmd, export, fragment, sandbox,
                                                                  loads, tiny_prior_16, capsys):
    (sandbox / "taken.safetensors").mkdir()
    before = listing(sandbox)
    rc, err = run_cli([cmd, *tiny_args(cmd, tiny_prior_16), "--steps", "1",
                       "--out", str(sandbox / "run"), "--export", str(sandbox / export)], capsys)
    assert_refused(rc, err, 1, fragment)
    assert listing(sandbox) == before
    assert loads == []


@pytest.mark.parametrize("cmd", TRAINERS)
@pytest.mark.parametrize("foreign", ["no-config", "other-trainer", "folder"])
def test_checkpoint_not_from_this_trainer_is_refused_before_anything(cmd, foreign, sandbox,
                                                                     loads, tiny_prior_16,
                                                                     capsys):
    run = sandbox / "run"
    run.mkdir()
    if foreign == "no-config":
        torch.save({"weights": torch.zeros(3)}, run / "checkpoint.pt")
    elif foreign == "folder":
        (run / "checkpoint.pt").mkdir()
    else:  # a checkpoint in the layout of another trainer (prior <-> deblur share tensors)
        other = {"net": {"base": 8}, "dataset": "fashion32"} if cmd == "train-prior" else \
            {"unet": {"base_channels": 8}, "dataset": "fashion32", "schedule": "linear"}
        torch.save({"model": {}, "opt": {}, "ema": {}, "step": 1,
                    "config": json.dumps(other), "image_shape": torch.tensor([1, SIZE, SIZE])},
                   run / "checkpoint.pt")
    before = listing(sandbox)
    rc, err = run_cli([cmd, *tiny_args(cmd, tiny_prior_16), "--steps", "1", "--out", str(run)],
                      capsys)
    assert_refused(rc, err, 1, "checkpoint.pt")
    assert f"not from {cmd}" in err or "not a file" in err, err
    assert err.count("\n") == 1  # one line
    assert listing(sandbox) == before
    assert loads == []


# -------------------------------------------------------------------- 4. messages and help
def _option_help(cmd: str, option: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in sub.choices[cmd]._actions if option in a.option_strings)
    return action.help


@pytest.mark.parametrize(("cmd", "kind"), [("train-prior", "folder"), ("train-davi", "folder"),
                                           ("train-deblur-net", "folder"),
                                           ("train-likelihood", "file stem")])
def test_export_help_says_folder_or_file_stem(cmd, kind):
    text = _option_help(cmd, "--export")
    assert text.startswith(f"a {kind}"), text  # said first, then what is written


@pytest.mark.parametrize(("cmd", "option"), [("train-prior", "--dataset"),
                                             ("train-deblur-net", "--dataset"),
                                             ("train-likelihood", "--prior")])
def test_dataset_spec_is_refused_with_what_to_give(cmd, option, sandbox, loads, capsys):
    before = listing(sandbox)
    rc, err = run_cli([cmd, *tiny_args(cmd), "--steps", "1", "--out", str(sandbox / "run"),
                       option, "fashion32:test"], capsys)
    assert_refused(rc, err, 1, "train split", "fashion32")
    assert listing(sandbox) == before
    assert loads == []


@pytest.mark.parametrize("value", ["abc", "0.9,x", "0", "1.5", "nan"])
def test_val_abars_is_a_usage_error(value, tmp_path, capsys):
    from diffinv.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-likelihood", "--prior", "fashion32", "--out", str(tmp_path / "run"),
              "--val-abars", value])
    assert e.value.code == 2 and "noise levels in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cmd", TRAINERS + ("train-autoencoder",))
def test_trainers_cap_threads_at_the_machines_cores(cmd, tmp_path, capsys, monkeypatch):
    """``--threads`` of every trainer is the shared option that :func:`diffinv.cli.main` caps at
    ``os.cpu_count()`` (with a warning); no trainer sets torch's count again uncapped. The run is
    stopped by a refused ``--export`` right after the threads are set."""
    import os

    before = torch.get_num_threads()
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "exp").mkdir()
    for name in ("ae-fashion32", "fashion32", "deblur-unet-fashion32", "davi-fashion32-sr-avgpool"):
        (tmp_path / "exp" / f"{name}.json").write_text("{}")
    key = "--prior" if cmd in ("train-likelihood", "train-davi") else "--dataset"
    export = str(tmp_path / ("x" if cmd == "train-likelihood" else "exp"))
    argv = [cmd, key, "fashion32", "--out", str(tmp_path / "run"), "--threads", "100000",
            "--export", export, *(["--task", "sr4"] if cmd == "train-davi" else [])]
    try:
        code = main(argv)
        err = capsys.readouterr().err
        assert "exceeds the" in err, err
        assert torch.get_num_threads() <= (os.cpu_count() or 1)
        assert code == 1 and "exists" in err, err
    finally:
        torch.set_num_threads(before)
