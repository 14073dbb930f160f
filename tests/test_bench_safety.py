"""``diffinv bench`` refuses bad input before any work and leaves nothing behind (issue 36).

Its output folder is checked first (a file, a path under a file, a place nothing can be created);
every (method, task, prior) of the grid is tried up to the solver's first network evaluation
before the first row, so a blind operator given to a non-blind solver (and the reverse), a noise
model the solver does not handle, or a non-positive count (``steps = 0``) stops the run with one
line; a refused run leaves no folder and no empty results file; a folder given instead of a task
file is named as such.

The images are a stand-in split (no download); the prior is the embedded fashion32 (its network
is never evaluated by a refused run: the first evaluation ends the rehearsal).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import diffinv.data
from diffinv.cli import main
from diffinv.data import ImageSet
from diffinv.diffusion.zoo import available_priors
from helpers import refused as refused_cli

pytestmark = pytest.mark.skipif("fashion32" not in available_priors(),
                                reason="embedded fashion32 prior not shipped")


def _split(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed(7)
    return ImageSet("fashion32", split, torch.rand((4, 1, 32, 32), generator=g) * 1.6 - 0.8,
                    torch.arange(4))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: files by content hash, folders by mode."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
                                       else oct(p.stat().st_mode & 0o777))
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """A folder with a user's file; the data split is a stand-in; commands run from inside it."""
    monkeypatch.setattr(diffinv.data, "load_split", _split)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("a user's file\n")
    monkeypatch.chdir(work)
    return work


def _value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


GOOD_METHOD = {"name": "dps", "steps": 2}
GOOD_TASK = {"name": "deblur", "operator": "gaussian-blur", "noise": "gaussian:0.05"}


def write_task(folder: Path, methods=(GOOD_METHOD,), tasks=(GOOD_TASK,), **run) -> Path:
    lines = [f"methods = [{', '.join(_value(m) for m in methods)}]",
             f"tasks = [{', '.join(_value(t) for t in tasks)}]",
             'priors = ["fashion32"]', 'metrics = ["psnr"]', "[run]"]
    table = {"name": "ok", "dataset": "fashion32:test", "n_images": 2, "batch_size": 2,
             "output": "out", **run}
    lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path = folder / "task.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def refused(argv: list[str], capsys) -> str:
    """:func:`helpers.refused`, and the message is one ``diffinv bench: error:`` line: that line."""
    err = refused_cli(argv, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffinv bench: error: "), err
    return lines[0]


def test_the_sandbox_run_works(sandbox, capsys):
    """The baseline every refusal below changes one thing of."""
    write_task(sandbox)
    assert main(["bench", "task.toml", "--no-progress"]) == 0
    assert {p.name for p in (sandbox / "out").iterdir()} == {"ok.jsonl", "ok.md", "ok.csv"}


# ----------------------------------------------------------------------- the output, first
def test_an_output_that_is_a_file_is_refused(sandbox, capsys):
    write_task(sandbox)
    (sandbox / "out").write_text("not a folder\n")
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    assert "out is a file" in err
    assert snapshot(sandbox) == before


def test_an_output_under_a_file_is_refused(sandbox, capsys):
    write_task(sandbox, output="notes.txt/results")
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    assert "notes.txt is a file" in err
    assert snapshot(sandbox) == before


def test_report_only_checks_its_output_too(sandbox, capsys):
    write_task(sandbox, output="notes.txt/results")
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--report-only"], capsys)
    assert "notes.txt is a file" in err
    assert snapshot(sandbox) == before


def test_an_output_that_cannot_be_created_is_refused(sandbox, capsys, unwritable):
    write_task(sandbox, output=str(unwritable / "bench-out"))
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    assert "cannot create" in err and "bench-out" in err
    assert snapshot(sandbox) == before
    assert not (unwritable / "bench-out").exists()


@pytest.mark.parametrize("flag", [["--gallery", "1"], ["--fid", "2"]])
def test_gallery_and_fid_check_their_output_first(sandbox, capsys, flag):
    write_task(sandbox, output="notes.txt/results")
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress", *flag], capsys)
    assert "notes.txt is a file" in err
    assert snapshot(sandbox) == before


# ------------------------------------------------- every cell is checked before the first row
BAD_CELLS = [
    pytest.param({"tasks": [GOOD_TASK, {"name": "blind", "operator": "blind-gaussian-blur",
                                        "noise": "gaussian:0.05"}]},
                 ["'dps'", "'blind'", "needs a known operator"], id="known-solver-on-blind-op"),
    pytest.param({"methods": [GOOD_METHOD, {"name": "gibbsddrm", "steps": 2}]},
                 ["'gibbsddrm'", "'deblur'", "blind"], id="blind-solver-on-known-op"),
    pytest.param({"methods": [GOOD_METHOD, {"name": "ddrm", "steps": 2}],
                  "tasks": [GOOD_TASK, {"name": "shot", "operator": "gaussian-blur",
                                        "noise": "poisson:25"}]},
                 ["'ddrm'", "'shot'", "Gaussian noise"], id="noise-the-solver-cannot-handle"),
    pytest.param({"methods": [GOOD_METHOD, {"name": "ddrm", "steps": 0}]},
                 ["'ddrm'", "steps", "got 0"], id="steps-0"),
    pytest.param({"methods": [GOOD_METHOD, {"name": "ddrm", "steps": -3}]},
                 ["'ddrm'", "steps", "got -3"], id="steps-negative"),
    pytest.param({"methods": [GOOD_METHOD, {"name": "cl-dps", "stride": 0, "steps": 2}]},
                 ["'cl-dps'", "stride", "got 0"], id="stride-0"),
]


@pytest.mark.parametrize("change, words", BAD_CELLS)
def test_a_bad_cell_stops_the_run_before_its_first_row(sandbox, capsys, change, words):
    """The first cell of each grid is fine: a run that checked cells only as it reached them
    would write its rows (or at least open its results file) first."""
    write_task(sandbox, **change)
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    for w in words:
        assert w in err
    assert snapshot(sandbox) == before  # no folder, no empty ok.jsonl


def test_a_refused_run_leaves_an_existing_output_folder_as_it_was(sandbox, capsys):
    (sandbox / "out").mkdir()
    (sandbox / "out" / "mine.txt").write_text("keep\n")
    write_task(sandbox, methods=[{"name": "ddrm", "steps": 0}])
    before = snapshot(sandbox)
    refused(["bench", "task.toml", "--no-progress"], capsys)
    assert snapshot(sandbox) == before


def test_a_failure_in_the_first_batch_leaves_no_empty_results_file(sandbox, capsys, monkeypatch):
    """The safety net behind the up-front checks: a unit that fails while computing (after every
    check passed) leaves neither a results file without rows nor the folder made for it."""
    from diffinv.bench.kinds import restore
    from diffinv.errors import DiffinvError

    def fails(ctx, cell, indices):
        raise DiffinvError("the solver diverged")

    monkeypatch.setattr(restore, "restore_batch", fails)
    write_task(sandbox)
    before = snapshot(sandbox)
    assert main(["bench", "task.toml", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "diffinv bench: error: the solver diverged" in err and "Traceback" not in err
    assert snapshot(sandbox) == before


# --------------------------------------------------------------------------- the task file
def test_a_folder_instead_of_a_task_file_is_named_as_such(sandbox, capsys):
    write_task(sandbox)
    before = snapshot(sandbox)
    err = refused(["bench", str(sandbox), "--no-progress"], capsys)
    assert "is a folder" in err and "task file" in err and "not found" not in err
    assert snapshot(sandbox) == before


def test_a_missing_task_file_is_still_not_found(sandbox, capsys):
    err = refused(["bench", "nope.toml", "--no-progress"], capsys)
    assert "task file not found" in err


def test_a_relative_plugin_name_is_refused(sandbox, capsys):
    write_task(sandbox, plugins=["."])
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    assert "plugin '.'" in err and "module name" in err
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("size", ["0", "-1"])
def test_fid_refuses_a_non_positive_batch_size(sandbox, capsys, size):
    write_task(sandbox)
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress", "--fid", "2", "--batch-size", size],
                  capsys)
    assert f"bad batch size {size}" in err
    assert snapshot(sandbox) == before


# --------------------------------------------------------------------- the other job kinds
def _write(folder: Path, text: str) -> None:
    (folder / "task.toml").write_text(text.strip() + "\n")


PRIOR_QUALITY = """
priors = ["fashion32"]
samplers = [{name = "ddim", steps = STEPS}]
metrics = ["fid", "fid-floor"]
[run]
name = "ok"
kind = "prior-quality"
output = "out"
n_samples = 2
chunk = 2
"""


@pytest.mark.parametrize("steps, words", [
    ("0", ["steps must be an integer >= 1", "got 0"]),
    ('"abc"', ["steps must be an integer >= 1", "'abc'"]),
    ("2.5", ["steps must be an integer >= 1", "2.5"]),
    ("5000", ["steps must lie in 1..1000", "5000"]),
])
def test_prior_quality_refuses_bad_sampler_steps_before_any_row(sandbox, capsys, steps, words):
    _write(sandbox, PRIOR_QUALITY.replace("STEPS", steps))
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    for w in words:
        assert w in err
    assert snapshot(sandbox) == before


def test_overhead_refuses_a_solver_the_task_does_not_fit_before_any_row(sandbox, capsys):
    _write(sandbox, """
methods = [{name = "dps", steps = 2}]
tasks = [{name = "blind", operator = "blind-gaussian-blur", noise = "gaussian:0.05"}]
priors = ["fashion32"]
batch_sizes = [1]
metrics = ["ratio"]
[run]
name = "ok"
kind = "overhead"
output = "out"
repeats = 6
profile = false
""")
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    assert "'dps'" in err and "'blind'" in err and "needs a known operator" in err
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("setting, words", [
    ("base_channels = 0", ["base_channels must be an integer >= 1", "got 0"]),
    ("base_channels = 8, channel_mults = [1, 0]", ["channel_mults", "got 0"]),
])
def test_network_speed_refuses_a_unet_without_channels_before_any_row(sandbox, capsys, setting,
                                                                      words):
    _write(sandbox, f"""
configs = [{{name = "c", {setting}, attention_resolutions = []}}]
batch_sizes = [1]
passes = ["forward"]
metrics = ["ms/call"]
[run]
name = "ok"
kind = "network-speed"
output = "out"
repeats = 1
calls = 1
warmup = 0
""")
    before = snapshot(sandbox)
    err = refused(["bench", "task.toml", "--no-progress"], capsys)
    for w in words:
        assert w in err
    assert snapshot(sandbox) == before
