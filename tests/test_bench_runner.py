"""The benchmark runner: grid expansion, resume after a kill, truncated lines, shards and ranks,
report numbers, and clear errors on bad input (which write nothing).

The job kind is the deterministic ``toy`` kind of ``test_bench_kinds``; nothing here needs the
physics, solvers or priors.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scipy import stats

import test_bench_kinds as toy  # registers the "toy" kind
from diffinv.bench import BenchConfigError, BenchRecordError, load_plan, run_benchmark
from diffinv.bench.plan import select_cells
from diffinv.bench.records import read_records, run_files
from diffinv.cli import bench as bench_cli
from diffinv.errors import DiffinvError, UnknownNameError

TESTS = Path(__file__).resolve().parent

GRID = """\
methods = ["alpha", {name = "beta", lr = 0.5, label = "beta-0.5"}]
tasks = ["deblur", {name = "sr", factor = 4}]
priors = ["p1"]
metrics = ["score", "index"]
"""


def write_task(d: Path, grid: str = GRID, **run) -> Path:
    """Write ``d/task.toml``: ``grid`` then a [run] table of defaults updated by ``run``
    (a value of None drops the key; values are written as JSON, which TOML reads the same)."""
    d.mkdir(parents=True, exist_ok=True)
    table = {"name": "t", "kind": "toy", "plugins": ["test_bench_kinds"], "seed": 7,
             "n_images": 6, "batch_size": 4, "output": "out", **run}
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None]
    p = d / "task.toml"
    p.write_text(grid + "\n[run]\n" + "\n".join(lines) + "\n")
    return p


def unit_rows(out_dir: Path, name: str = "t") -> dict[str, tuple]:
    """key -> (cell labels, index, metrics, nfe, seconds) over every file of the run; a key
    appearing twice is an error."""
    rows: dict[str, tuple] = {}
    for p in run_files(out_dir, name):
        for r in read_records(p)[0]:
            assert r["key"] not in rows, f"duplicate row {r['key']}"
            labels = tuple(r["cell"][a]["label"] for a in ("method", "task", "prior"))
            rows[r["key"]] = (labels, r["index"], r["metrics"], r["nfe"], r["seconds"])
    return rows


def run_quiet(path, **kw):
    return run_benchmark(path, progress=False, **kw)


# ---------------------------------------------------------------------------------------- grid
def test_grid_is_the_product_and_cells_blocks_are_subgrids(tmp_path):
    plan = plan_full = load_plan(write_task(tmp_path))
    labels = [c.labels for c in plan.cells]
    assert labels == [("alpha", "deblur", "p1"), ("alpha", "sr", "p1"),
                      ("beta-0.5", "deblur", "p1"), ("beta-0.5", "sr", "p1")]
    assert all(c.target == 6 for c in plan.cells)
    beta = plan.cells[2]["method"]
    assert beta.name == "beta" and dict(beta.params) == {"lr": 0.5}

    blocks = GRID + textwrap.dedent("""
        [[cell]]
        method = "gamma"
        n_images = 3
        [[cell]]
        methods = ["alpha", "gamma"]
        task = {name = "sr", factor = 4}
        n_images = 3
        """)
    plan = load_plan(write_task(tmp_path / "b", grid=blocks))
    got = [(c.labels, c.target) for c in plan.cells]
    assert got == [(("gamma", "deblur", "p1"), 3), (("gamma", "sr", "p1"), 3),
                   (("alpha", "sr", "p1"), 3)]  # (gamma, sr) again: merged with the first
    with pytest.raises(BenchConfigError, match="appears twice with different n_images"):
        load_plan(write_task(tmp_path / "d", grid=blocks.replace("n_images = 3\n", "", 1)))
    # in a block, a top-level label stands for that value (with its parameters)
    ref = GRID + '[[cell]]\nmethods = ["beta-0.5"]\ntask = "sr"\n'
    (cell,) = load_plan(write_task(tmp_path / "r", grid=ref)).cells
    assert cell["method"] == plan_full.cells[2]["method"] and dict(cell["task"].params) == {
        "factor": 4}
    # the same labels with other parameters would be ambiguous in a table
    clash = blocks.replace('task = {name = "sr", factor = 4}', 'task = {name = "sr"}')
    with pytest.raises(BenchConfigError, match="two different cells are labelled"):
        load_plan(write_task(tmp_path / "c", grid=clash))


def test_relabelling_keeps_results_and_params_change_them(tmp_path):
    a = load_plan(write_task(tmp_path / "a", grid=GRID))
    b = load_plan(write_task(tmp_path / "b", grid=GRID.replace('label = "beta-0.5"',
                                                               'label = "B"')))
    c = load_plan(write_task(tmp_path / "c", grid=GRID.replace("lr = 0.5", "lr = 0.25")))
    assert [a.cell_key(x) for x in a.cells] == [b.cell_key(x) for x in b.cells]
    assert a.cell_key(a.cells[2]) != c.cell_key(c.cells[2])
    assert a.cell_key(a.cells[0]) == c.cell_key(c.cells[0])


# -------------------------------------------------------------------------------------- resume
def _subprocess_cmd(task: Path) -> list[str]:
    script = ("import argparse, sys; from diffinv.cli import bench; p = argparse.ArgumentParser();"
              " s = p.add_subparsers(); bench.register(s); a = p.parse_args(sys.argv[1:]);"
              " sys.exit(a.func(a))")
    return [sys.executable, "-c", script, "bench", str(task), "--no-progress"]


def test_killed_run_resumes_to_exactly_the_uninterrupted_rows(tmp_path):
    ref = write_task(tmp_path / "ref")
    run_quiet(ref)
    expected = unit_rows(tmp_path / "ref" / "out")
    assert len(expected) == 4 * 6

    task = write_task(tmp_path / "kill", sleep=0.2)  # ~5 s in all: the kill lands early
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(_subprocess_cmd(task), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    out = tmp_path / "kill" / "out" / "t.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 6:
                break
            if proc.poll() is not None:
                pytest.fail(f"runner exited early: {proc.stderr.read().decode()}")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    partial = unit_rows(tmp_path / "kill" / "out")
    assert 6 <= len(partial) < len(expected), "the kill should land half-way"
    assert all(expected[k] == v for k, v in partial.items())

    write_task(tmp_path / "kill")  # resume without the sleep (an option, not an identity)
    outcome = run_quiet(task)
    assert outcome.skipped == len(partial) and outcome.written == len(expected) - len(partial)
    assert unit_rows(tmp_path / "kill" / "out") == expected
    again = run_quiet(task)  # nothing left to do
    assert again.written == 0 and again.skipped == len(expected)


def test_exception_half_way_keeps_finished_batches(tmp_path):
    ref = write_task(tmp_path / "ref")
    run_quiet(ref)
    expected = unit_rows(tmp_path / "ref" / "out")

    task = write_task(tmp_path / "x", fail_at=5)
    with pytest.raises(RuntimeError, match="injected failure at index 5"):
        run_quiet(task)
    partial = unit_rows(tmp_path / "x" / "out")
    # cell 1: batch [0..3] written, batch [4, 5] failed before anything of it was written
    assert sorted(v[1] for v in partial.values()) == [0, 1, 2, 3]
    write_task(tmp_path / "x")  # same task without the failure
    run_quiet(task)
    assert unit_rows(tmp_path / "x" / "out") == expected


def test_truncated_last_line_is_ignored_then_cut_off(tmp_path):
    task = write_task(tmp_path)
    run_quiet(task)
    expected = unit_rows(tmp_path / "out")
    f = tmp_path / "out" / "t.jsonl"
    lines = f.read_bytes().splitlines(keepends=True)
    # drop the last two rows and leave half of one of them, as a kill mid-write would
    f.write_bytes(b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    rows, end = read_records(f)
    assert len(rows) == len(lines) - 2 and end < f.stat().st_size
    outcome = run_quiet(task)
    assert outcome.written == 2
    assert unit_rows(tmp_path / "out") == expected
    assert f.read_bytes().endswith(b"\n")
    assert all(json.loads(x) for x in f.read_bytes().splitlines())


def test_corrupt_complete_line_is_an_error(tmp_path):
    task = write_task(tmp_path)
    run_quiet(task)
    f = tmp_path / "out" / "t.jsonl"
    lines = f.read_bytes().splitlines(keepends=True)
    f.write_bytes(lines[0] + b"{not json\n" + b"".join(lines[1:]))
    with pytest.raises(BenchRecordError, match=r"t.jsonl:2: not a JSON object"):
        run_quiet(task)


def test_changed_weights_are_recomputed_and_reported_alone(tmp_path):
    w = tmp_path / "w.bin"
    w.write_bytes(b"weights v1")
    grid = GRID.replace('priors = ["p1"]', f'priors = [{{name = "p1", weights = "{w}"}}]')
    task = write_task(tmp_path, grid=grid)
    first = run_quiet(task)
    assert first.written == 24
    w.write_bytes(b"weights v2")
    second = run_quiet(task)
    assert second.written == 24 and second.skipped == 0
    md = (tmp_path / "out" / "t.md").read_text()
    import hashlib

    assert hashlib.sha256(b"weights v2").hexdigest() in md
    assert hashlib.sha256(b"weights v1").hexdigest() not in md
    assert all(c.n == 6 for c in second.report.cells)
    with pytest.raises(BenchRecordError, match="different resolved identities"):
        run_quiet(task, report_only=True)


# -------------------------------------------------------------------------------------- shards
def test_shards_together_give_the_unsharded_rows(tmp_path):
    run_quiet(write_task(tmp_path / "ref"))
    expected = unit_rows(tmp_path / "ref" / "out")

    task = write_task(tmp_path / "sh")
    a = run_quiet(task, shard="0/2")
    assert a.report.cells[0].n == 3 and not a.report.cells[0].complete
    assert "3/6*" in (tmp_path / "sh" / "out" / "t.md").read_text()
    run_quiet(task, shard="1/2")
    assert unit_rows(tmp_path / "sh" / "out") == expected
    names = sorted(p.name for p in run_files(tmp_path / "sh" / "out", "t"))
    assert names == ["t.part0of2.jsonl", "t.part1of2.jsonl"]
    md = (tmp_path / "sh" / "out" / "t.md").read_text()
    assert "*" not in md.split("| N |")[1] and "| 6 |" in md


def test_torchrun_ranks_and_shards_combine(tmp_path):
    run_quiet(write_task(tmp_path / "ref"))
    expected = unit_rows(tmp_path / "ref" / "out")
    task = write_task(tmp_path / "rk")
    for shard in ("0/2", "1/2"):
        for rank in ("0", "1"):
            o = run_quiet(task, shard=shard, env={"RANK": rank, "WORLD_SIZE": "2"})
            assert o.worker == (int(shard[0]) * 2 + int(rank), 4)
    assert unit_rows(tmp_path / "rk" / "out") == expected
    assert len(run_files(tmp_path / "rk" / "out", "t")) == 4
    # an unsharded rerun finds everything done, whichever worker wrote it
    assert run_quiet(task).written == 0


def test_only_computes_the_matching_cells_and_the_rest_resumes(tmp_path):
    run_quiet(write_task(tmp_path / "ref"))
    expected = unit_rows(tmp_path / "ref" / "out")

    task = write_task(tmp_path / "only")
    first = run_quiet(task, only=["methods=beta-0.5", "task=sr"])  # plural axis, label
    rows = unit_rows(tmp_path / "only" / "out")
    assert {r[0] for r in rows.values()} == {("beta-0.5", "sr", "p1")}
    assert first.written == 6  # the report still lists every cell, the others empty
    assert sorted(c.n for c in first.report.cells) == [0, 0, 0, 6]
    assert run_quiet(task, only=["method=beta"]).written == 6  # registry name
    assert {r[0][0] for r in unit_rows(tmp_path / "only" / "out").values()} == {"beta-0.5"}
    assert run_quiet(task).written == 12
    assert unit_rows(tmp_path / "only" / "out") == expected


def test_only_filters_on_one_axis_are_alternatives_and_on_two_axes_all_hold(tmp_path):
    plan = load_plan(write_task(tmp_path))
    both = select_cells(plan.cells, ["method=alpha", "method=beta-0.5", "task=sr"])
    assert sorted(c.labels for c in both) == [("alpha", "sr", "p1"), ("beta-0.5", "sr", "p1")]
    assert select_cells(plan.cells, ["method=alpha", "method=alpha"]) == \
        select_cells(plan.cells, ["method=alpha"])
    assert len(select_cells(plan.cells, None)) == len(plan.cells)


@pytest.mark.parametrize("spec, match", [
    ("method", "expected AXIS=VALUE"),
    ("colour=red", "no axis 'colour'.*'method', 'prior', 'task'"),
    ("method=gamma", "no method 'gamma'; known: \\['alpha', 'beta-0.5'\\]"),
])
def test_only_refuses_bad_filters_and_writes_nothing(tmp_path, spec, match):
    task = write_task(tmp_path)
    with pytest.raises(BenchConfigError, match=match):
        run_quiet(task, only=[spec])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -------------------------------------------------------------------------------------- report
def test_report_numbers_match_a_hand_computation(tmp_path):
    task = write_task(tmp_path)
    run_quiet(task)
    plan = load_plan(task)
    rows = list(csv.reader(line for line in (tmp_path / "out" / "t.csv").read_text().splitlines()
                           if not line.startswith("#")))
    head, body = rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert head[:3] == ["method", "task", "prior"]
    p1_sha = __import__("hashlib").sha256(b"p1").hexdigest()
    for cell in plan.cells:
        m, t = cell["method"], cell["task"]
        xs = [toy.toy_value(m.name, dict(m.params), t.name, "p1", p1_sha, 7, i) for i in range(6)]
        n, mean, sd = len(xs), sum(xs) / len(xs), stats.tstd(xs)
        hw = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        (r,) = [b for b in body if (b["method"], b["task"], b["column"]) == (m.label, t.label,
                                                                              "score")]
        assert float(r["value"]) == pytest.approx(mean, rel=1e-12)
        assert float(r["ci_low"]) == pytest.approx(mean - hw, rel=1e-9)
        assert float(r["ci_high"]) == pytest.approx(mean + hw, rel=1e-9)
        assert (r["n"], r["target"], r["complete"]) == ("6", "6", "1")
        (nfe,) = [b for b in body if (b["method"], b["task"], b["column"]) == (m.label, t.label,
                                                                                "nfe")]
        assert float(nfe["value"]) == len(m.name)
    header = (tmp_path / "out" / "t.csv").read_text().splitlines()
    assert header[0] == f"# Command: diffinv bench {os.path.relpath(task)}" or \
        header[0].startswith("# Command: diffinv bench ")
    md = (tmp_path / "out" / "t.md").read_text()
    for needed in ("Command: diffinv bench", "Machine: ", "torch ", " thread", "Date: ",
                   f"Prior p1: sha256 {p1_sha}", "| method | task | prior | score | index | NFE"):
        assert needed in md, needed
    # every row records the prior's hash
    assert all(r["cell"]["prior"]["resolved"]["sha256"] == p1_sha
               for r in read_records(tmp_path / "out" / "t.jsonl")[0])


def test_rerunning_a_finished_table_leaves_its_report_files_untouched(tmp_path):
    task = write_task(tmp_path)
    run_quiet(task)
    out = tmp_path / "out"
    # mark the Date lines: a rerun with nothing new must not rewrite them (only the date would
    # change), while a table that changes must be written again
    for f in ("t.md", "t.csv"):
        text = (out / f).read_text()
        marked = re.sub(r"Date: [^\n]*", "Date: MARK", text)
        assert marked != text
        (out / f).write_text(marked)
    assert run_quiet(task).written == 0
    assert "Date: MARK" in (out / "t.md").read_text()
    assert "Date: MARK" in (out / "t.csv").read_text()
    write_task(tmp_path, n_images=4)
    run_quiet(task, report_only=True)
    assert "Date: MARK" not in (out / "t.md").read_text()
    assert "Date: MARK" not in (out / "t.csv").read_text()


def test_report_only_rerenders_identically_and_ignores_stray_rows(tmp_path):
    task = write_task(tmp_path)
    run_quiet(task)
    md = (tmp_path / "out" / "t.md").read_text()
    (tmp_path / "out" / "t.md").unlink()
    (tmp_path / "out" / "t.csv").unlink()
    o = run_quiet(task, report_only=True)
    assert o.written == 0
    strip = lambda s: [x for x in s.splitlines() if not x.startswith("- Date:")]  # noqa: E731
    assert strip((tmp_path / "out" / "t.md").read_text()) == strip(md)
    # shrinking the grid leaves rows that are not in the table; they are counted, not used
    # (and a smaller target leaves the rows of the higher indices out)
    write_task(tmp_path, grid=GRID.replace('"alpha", ', ""), n_images=4)
    o = run_quiet(task, report_only=True)
    assert [c.cell.labels[0] for c in o.report.cells] == ["beta-0.5", "beta-0.5"]
    assert [c.n for c in o.report.cells] == [4, 4]
    assert o.report.n_unused == 12 + 2 * 2
    assert "16 not in this table" in (tmp_path / "out" / "t.md").read_text()


def test_reuse_takes_another_runs_rows_for_the_same_units_only(tmp_path):
    """Run b reuses run a: b computes only the units a has not, its report equals a fresh
    computation, and another seed reuses nothing."""
    a = write_task(tmp_path, grid=GRID.replace('metrics = ["score", "index"]', 'metrics = ["score"]'),
                   name="a").rename(tmp_path / "a.toml")
    run_quiet(a)
    grid_b = GRID.replace('"alpha", ', '"alpha", "gamma", ').replace('"index"]', '"square"]')
    b = write_task(tmp_path, grid=grid_b, name="b", reuse=["a"]).rename(tmp_path / "b.toml")
    first = run_quiet(b)
    assert first.written == 2 * 6  # gamma on both tasks; alpha and beta come from run a
    assert {r[0][0] for r in unit_rows(tmp_path / "out", "b").values()} == {"gamma"}
    fresh = run_quiet(write_task(tmp_path / "fresh", grid=grid_b, name="b"))
    for mine, ref in zip(first.report.cells, fresh.report.cells, strict=True):
        assert mine.cell.labels == ref.cell.labels and mine.n == ref.n == 6
        for col in ("score", "square"):
            assert mine.columns[col].center == ref.columns[col].center
    assert "24 of them from run(s) a (same unit keys" in (tmp_path / "out" / "b.md").read_text()
    assert run_quiet(b).written == 0
    write_task(tmp_path, grid=grid_b, name="b", reuse=["a"], seed=8).rename(tmp_path / "b.toml")
    assert run_quiet(b).written == 3 * 2 * 6  # another seed: other measurements, nothing reused


@pytest.mark.parametrize("reuse", [["t"], "a", ["../a"], [""]])
def test_reuse_must_name_other_runs(tmp_path, reuse):
    with pytest.raises(BenchConfigError, match="reuse"):
        run_quiet(write_task(tmp_path, reuse=reuse))
    assert _no_output(tmp_path)


def test_cli_runs_and_reports(tmp_path, capsys):
    task = write_task(tmp_path)
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", str(task), "--no-progress"])
    assert args.func(args) == 0
    rows = read_records(tmp_path / "out" / "t.jsonl")[0]
    assert rows[0]["command"] == f"diffinv bench {task}"
    args = parser.parse_args(["bench", str(task), "--report-only"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--shard", "0/2"], ["--report-only"]])
def test_cli_gallery_refuses_shards_and_report_only(tmp_path, extra):
    task = write_task(tmp_path)
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", str(task), "--gallery", "2", *extra])
    with pytest.raises(BenchConfigError, match="--gallery computes its own images"):
        args.func(args)
    assert _no_output(tmp_path)


def test_gallery_is_for_restore_tables_only(tmp_path):
    from diffinv.bench.gallery import make_gallery

    with pytest.raises(BenchConfigError, match="is a 'toy' run, not 'restore'"):
        make_gallery(write_task(tmp_path), 2, progress=False)
    assert _no_output(tmp_path)


# ----------------------------------------------------------------------------------- bad input
def _no_output(d: Path) -> bool:
    return not (d / "out").exists()


@pytest.mark.parametrize("run, grid, err, match", [
    ({"kind": "nope"}, GRID, UnknownNameError, "unknown job kind 'nope'"),
    ({}, GRID.replace('"alpha"', '"delta"'), UnknownNameError, "unknown method 'delta'"),
    ({}, GRID.replace('"index"]', '"psnr"]'), UnknownNameError, "unknown metric 'psnr'"),
    ({}, GRID.replace("methods = ", "# "), BenchConfigError, "no 'methods' given"),
    ({}, GRID.replace('["p1"]', "[]"), BenchConfigError, "'priors' is empty"),
    ({}, GRID + "solvers = ['x']\n", BenchConfigError, r"unknown grid key\(s\) \['solvers'\]"),
    ({"metrics": ["score"]}, GRID.replace("metrics = ", "# "), BenchConfigError,
     r"\['metrics'\] are inside \[run\]"),
    ({"n_image": 3}, GRID, BenchConfigError, r"unknown \[run\] key\(s\) \['n_image'\]"),
    ({"seed": "one"}, GRID, BenchConfigError, "seed must be int"),
    ({"batch_size": 0}, GRID, BenchConfigError, "batch_size must be >= 1"),
    ({"n_images": None}, GRID, BenchConfigError, "n_images is required"),
    ({"device": "gpu9"}, GRID, BenchConfigError, "not a torch device"),
    ({"plugins": ["no_such_module_x"]}, GRID, BenchConfigError, "no_such_module_x"),
    ({}, GRID.replace('label = "beta-0.5"', 'label = "alpha"'), BenchConfigError, "labelled"),
])
def test_bad_task_files_fail_clearly_and_write_nothing(tmp_path, run, grid, err, match):
    task = write_task(tmp_path, grid=grid, **run)
    with pytest.raises(err, match=match):
        run_quiet(task)
    assert _no_output(tmp_path)


def test_missing_file_malformed_toml_and_bad_shards(tmp_path):
    with pytest.raises(BenchConfigError, match="task file not found"):
        run_quiet(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nname = 'x'\n")
    with pytest.raises(BenchConfigError, match="malformed TOML"):
        run_quiet(bad)
    task = write_task(tmp_path)
    for spec in ("1/1", "2/2", "a/b", "2", "-1/2", "0/0", "1/2/3"):
        with pytest.raises(BenchConfigError, match="bad --shard"):
            run_quiet(task, shard=spec)
    with pytest.raises(BenchConfigError, match="RANK/WORLD_SIZE"):
        run_quiet(task, env={"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(BenchRecordError, match="no rows of run 't'"):
        run_quiet(task, report_only=True)
    assert _no_output(tmp_path)


def test_cli_reports_errors_through_diffinv_error(tmp_path):
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", str(tmp_path / "missing.toml")])
    with pytest.raises(DiffinvError, match="task file not found"):
        args.func(args)


def test_second_writer_on_the_same_file_is_refused(tmp_path):
    from diffinv.bench.records import RecordWriter

    p = tmp_path / "x.jsonl"
    with RecordWriter(p) as w, pytest.raises(BenchRecordError, match="another process"):
        w.write({"a": 1})
        with RecordWriter(p):
            pass
    assert read_records(p)[0] == [{"a": 1}]


def test_readme_example_task_file_expands_as_described(tmp_path):
    text = (TESTS.parent / "benchmarks" / "README.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.toml").write_text(block)
    plan = load_plan(tmp_path / "example.toml")
    assert [(c.labels, c.target) for c in plan.cells] == [
        (("dps", "sr4", "fashion32"), 50), (("DDRM", "sr4", "fashion32"), 50),
        (("DPS zeta=0.3", "gauss-deblur", "fashion32"), 20)]
    assert dict(plan.cells[1]["method"].params) == {"eta": 0.85}
    assert plan.options == {"dataset": "fashion32:test"} and plan.batch_size == 8
    assert plan.out_dir == tmp_path.parent.resolve()


def _rows_by_worker(out_dir: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for p in run_files(out_dir, "t"):
        for r in read_records(p)[0]:
            by.setdefault(r["worker"], []).append(r)
    return by


def test_batch_split_hands_out_whole_batches_and_together_gives_the_plain_rows(tmp_path):
    run_quiet(write_task(tmp_path / "ref"))
    expected = unit_rows(tmp_path / "ref" / "out")
    task = write_task(tmp_path / "b")  # 4 cells x 6 images, batch 4: batches [0-3], [4, 5] per cell
    for k in range(3):
        run_quiet(task, shard=f"{k}/3", split="batches")
    assert unit_rows(tmp_path / "b" / "out") == expected
    by = _rows_by_worker(tmp_path / "b" / "out")
    grid_batches = []
    for w, rows in sorted(by.items()):
        for r in rows:
            labels = tuple(r["cell"][a]["label"] for a in ("method", "task", "prior"))
            grid_batches.append((w, labels, r["index"] // 4, r["batch"]))
    # every batch is whole (4 or 2 images) and belongs to a single worker
    assert {(i, b) for _, _, i, b in grid_batches} == {(0, 4), (1, 2)}
    owners: dict[tuple, set[str]] = {}
    for w, labels, i, _ in grid_batches:
        owners.setdefault((labels, i), set()).add(w)
    assert len(owners) == 8 and all(len(o) == 1 for o in owners.values())
    # worker k takes batches k, k + 3, ... of the grid in order: 3, 3 and 2 batches
    assert sorted(len({(lab, i) for w2, lab, i, _ in grid_batches if w2 == w}) for w in by) == [2, 3, 3]
    # the image split of the same shards cuts every cell's 6 images into batches of 2
    task_i = write_task(tmp_path / "i")
    run_quiet(task_i, shard="0/3")
    assert {r["batch"] for r in read_records(tmp_path / "i" / "out" / "t.part0of3.jsonl")[0]} == {2}


def test_batch_split_resumes_whatever_the_rows_on_disk(tmp_path):
    run_quiet(write_task(tmp_path / "ref"))
    expected = unit_rows(tmp_path / "ref" / "out")
    task = write_task(tmp_path / "r")
    run_quiet(task, shard="1/2")  # image split first: odd images
    for k in range(2):
        run_quiet(task, shard=f"{k}/2", split="batches")
    assert unit_rows(tmp_path / "r" / "out") == expected


def test_batch_size_override_changes_the_batches_not_the_rows(tmp_path):
    run_quiet(write_task(tmp_path / "ref"))
    expected = unit_rows(tmp_path / "ref" / "out")
    task = write_task(tmp_path / "bs")
    run_quiet(task, batch_size=5)
    assert unit_rows(tmp_path / "bs" / "out") == expected
    assert sorted({r["batch"] for r in read_records(tmp_path / "bs" / "out" / "t.jsonl")[0]}) == [1, 5]


@pytest.mark.parametrize("kw, match", [({"batch_size": 0}, "bad batch size 0"),
                                       ({"batch_size": 2.5}, "bad batch size 2.5"),
                                       ({"split": "cells"}, "bad split 'cells'"),
                                       ({"device": "gpu7"}, "--device 'gpu7' is not a torch device")])
def test_bad_overrides_fail_clearly_and_write_nothing(tmp_path, kw, match):
    task = write_task(tmp_path)
    with pytest.raises(BenchConfigError, match=match):
        run_quiet(task, **kw)
    assert _no_output(tmp_path)


def test_device_override_is_recorded_and_report_only_needs_no_device(tmp_path):
    import torch

    task = write_task(tmp_path, device="cuda:0")
    if not torch.cuda.is_available():
        with pytest.raises(BenchConfigError, match="sees no CUDA device"):
            run_quiet(task)  # the task file's own device is checked before computing
    run_quiet(task, device="cpu")
    rows = read_records(tmp_path / "out" / "t.jsonl")[0]
    assert {r["device"] for r in rows} == {"cpu"}
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", str(task), "--report-only"])
    assert args.func(args) == 0  # no device touched, whatever the task file names


def test_cli_overrides_are_stored_in_the_rows_command(tmp_path):
    task = write_task(tmp_path)
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", str(task), "--no-progress", "--shard", "0/2", "--split",
                              "batches", "--batch-size", "3", "--device", "cpu"])
    assert args.func(args) == 0
    rows = read_records(tmp_path / "out" / "t.part0of2.jsonl")[0]
    assert rows[0]["command"] == (f"diffinv bench {task} --shard 0/2 --device cpu --batch-size 3 "
                                  "--split batches")
    assert {r["batch"] for r in rows} == {3}
