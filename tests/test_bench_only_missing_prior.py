"""``diffinv bench TASK --only ...`` needs the weights files of the cells it computes only: a
prior listed in the task file whose file does not exist yet (a study whose priors are trained one
after another) leaves its cells at N = 0/target in the report, whose header names the missing
file; selecting that prior still fails before any row with the loader's message."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import diffinv.data
import test_bench_kinds  # noqa: F401  (registers the "toy" kind)
from diffinv.bench import run_benchmark
from diffinv.bench.records import read_records
from diffinv.data import ImageSet
from diffinv.errors import DiffinvError


def fake_split(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed(7)
    return ImageSet("fashion32", split, torch.rand((2, 1, 32, 32), generator=g) * 2 - 1,
                    torch.arange(2))


def _task(tmp_path: Path, present: Path, later: Path) -> Path:
    p = tmp_path / "t.toml"
    p.write_text("\n".join([
        'methods = [{name = "dps", steps = 2, label = "DPS"}]',
        'tasks = [{name = "sr4", operator = "sr-avgpool", noise = "gaussian:0.01"}]',
        f'priors = [{{name = "toy", path = {json.dumps(str(present))}}}, '
        f'{{name = "later", path = {json.dumps(str(later))}}}]',
        'metrics = ["psnr"]',
        "[run]", 'name = "t"', 'dataset = "fashion32:valid"', "n_images = 2", "batch_size = 2",
    ]) + "\n")
    return p


def _table_row(md: str, prior: str) -> str:
    (row,) = [ln for ln in md.splitlines() if ln.startswith(f"| DPS | sr4 | {prior} |")]
    return row


def _without_date(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "Date: " not in ln]


def test_only_an_existing_prior_runs_while_another_file_is_missing(tmp_path, tiny_prior,
                                                                   monkeypatch):
    monkeypatch.setattr(diffinv.data, "load_split", fake_split)
    later = tmp_path / "later" / "toy.safetensors"  # trained later: not there yet
    task = _task(tmp_path, tiny_prior, later)

    # the missing prior, selected (or selected by running everything): today's message, no rows
    for only in (["prior=later"], None):
        with pytest.raises(DiffinvError, match=r"prior file .*later.* does not exist"):
            run_benchmark(task, only=only, progress=False)
        assert not (tmp_path / "t.jsonl").exists()

    out = run_benchmark(task, only=["prior=toy"], progress=False)
    assert out.written == 2
    rows = read_records(tmp_path / "t.jsonl")[0]
    assert {r["cell"]["prior"]["label"] for r in rows} == {"toy"}
    sha = hashlib.sha256(tiny_prior.read_bytes()).hexdigest()
    assert {r["cell"]["prior"]["resolved"]["sha256"] for r in rows} == {sha}

    # the report lists every cell: the missing prior's as not done, its file named in the header
    assert [(c.cell["prior"].label, c.n, c.target) for c in out.report.cells] == [
        ("toy", 2, 2), ("later", 0, 2)]
    md = (tmp_path / "t.md").read_text()
    assert _table_row(md, "toy").endswith("| 2 |")
    assert _table_row(md, "later").endswith("| 0/2* |")
    (line,) = [ln for ln in md.splitlines() if "issing" in ln]
    assert str(later) in line and "prior later" in line
    assert str(later) in (tmp_path / "t.csv").read_text()
    csv_later = [ln for ln in (tmp_path / "t.csv").read_text().splitlines()
                 if ln.startswith("DPS,sr4,later,psnr,")]
    assert len(csv_later) == 1 and csv_later[0].endswith(",0,2,0")

    # --report-only renders the same tables
    run_benchmark(task, report_only=True, progress=False)
    assert _without_date((tmp_path / "t.md").read_text()) == _without_date(md)

    # once the file exists, its cells run; the rows already there keep their unit keys
    later.parent.mkdir()
    shutil.copy(tiny_prior, later)
    shutil.copy(tiny_prior.with_suffix(".json"), later.with_suffix(".json"))
    full = run_benchmark(task, progress=False)
    assert (full.written, full.skipped) == (2, 2)
    md = (tmp_path / "t.md").read_text()
    assert not [ln for ln in md.splitlines() if "issing" in ln]
    assert _table_row(md, "later").endswith("| 2 |")


# ---------------------------------------------------------- the same, kind-agnostic ("toy" kind)
GRID = """\
methods = ["alpha"]
tasks = ["deblur"]
priors = [{{name = "p1", weights = {w1}}}, {{name = "p2", weights = {w2}}}]
metrics = ["score"]
"""


def _toy_task(d: Path, w1: Path, w2: Path, **run) -> Path:
    table = {"name": "t", "kind": "toy", "plugins": ["test_bench_kinds"], "seed": 7,
             "n_images": 4, "batch_size": 1, "output": "out", **run}
    p = d / "task.toml"
    p.write_text(GRID.format(w1=json.dumps(str(w1)), w2=json.dumps(str(w2))) + "\n[run]\n"
                 + "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + "\n")
    return p


def test_only_and_shard_resolve_only_the_cells_they_compute(tmp_path):
    """The toy kind reads each prior's "weights" file to resolve it: a file it would need and
    cannot read is an error, so a run must not resolve the cells it leaves out."""
    w1, w2 = tmp_path / "w1.bin", tmp_path / "w2.bin"
    w1.write_bytes(b"weights 1")  # w2 does not exist
    task = _toy_task(tmp_path, w1, w2)
    out = run_benchmark(task, only=["prior=p1"], shard="0/2", split="batches", progress=False)
    assert [c.n for c in out.report.cells] == [2, 0]
    out = run_benchmark(task, only=["prior=p1"], shard="1/2", split="batches", progress=False)
    assert [c.n for c in out.report.cells] == [4, 0]
    with pytest.raises(FileNotFoundError):
        run_benchmark(task, only=["prior=p2"], progress=False)
    # the whole grid in 8 batches (p1: 0..3, p2: 4..7): worker 1 has batch 1 only, done already
    out = run_benchmark(task, shard="1/8", split="batches", progress=False)
    assert (out.written, out.skipped) == (0, 1)


def test_a_cell_left_out_with_rows_of_two_weights_is_reported_with_the_current_ones(tmp_path):
    """A run resolves what it leaves out only where the report needs it: a cell whose rows were
    computed with two different weights (the prior was retrained half-way) keeps the rows of the
    weights on disk, as a run of that cell would."""
    w1, w2 = tmp_path / "w1.bin", tmp_path / "w2.bin"
    w1.write_bytes(b"weights 1")
    w2.write_bytes(b"weights 2")
    task = _toy_task(tmp_path, w1, w2)
    run_benchmark(task, only=["prior=p1"], progress=False)
    w1.write_bytes(b"weights 1, retrained")
    failing = _toy_task(tmp_path, w1, w2, fail_at=2)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_benchmark(failing, only=["prior=p1"], progress=False)  # rows 0, 1 of the new weights
    task = _toy_task(tmp_path, w1, w2)
    out = run_benchmark(task, only=["prior=p2"], progress=False)
    assert [c.n for c in out.report.cells] == [2, 4]
    new = hashlib.sha256(b"weights 1, retrained").hexdigest()
    md = (tmp_path / "out" / "t.md").read_text()
    assert new in md and hashlib.sha256(b"weights 1").hexdigest() not in md
    assert re.search(r"Rows: 10 in 1 file\(s\), 4 not in this table", md)
