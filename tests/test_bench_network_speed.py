"""The "network-speed" job kind on a tiny UNet (a seconds-long smoke run), and its task file."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from diffinv.bench import BenchConfigError, RunContext, load_plan, run_benchmark
from diffinv.bench.records import read_records
from diffinv.errors import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_resolutions": [], "image_size": 8}


def write_task(d: Path, configs=(TINY,), batches=(1, 2), passes=("forward", "forward+backward"),
               metrics=None, **run) -> Path:
    d.mkdir(parents=True, exist_ok=True)

    def inline(c):
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in c.items()) + "}"

    lines = [f"configs = [{', '.join(inline(c) for c in configs)}]",
             f"batch_sizes = {json.dumps(list(batches))}",
             f"passes = {json.dumps(list(passes))}"]
    if metrics is not None:
        lines.append(f"metrics = {json.dumps(metrics)}")
    table = {"name": "speed", "kind": "network-speed", "repeats": 6, "calls": 1, "warmup": 1,
             "batch_size": 6, "threads": 1, "output": "out", **run}
    lines += ["[run]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    p = d / "task.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_smoke_run_rows_and_median_report(tmp_path):
    threads = torch.get_num_threads()
    want = 2 if threads == 1 else 1  # a thread count the job must set, and rows must record
    try:
        out = run_benchmark(write_task(tmp_path, threads=want), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert out.written == 4 * 6
    rows = read_records(tmp_path / "out" / "speed.jsonl")[0]
    from diffinv.diffusion.unet import UNet

    n_params = sum(p.numel() for p in UNet(**{k: v for k, v in TINY.items() if k != "name"})
                   .parameters())
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["cell"]["config"]["label"], r["cell"]["batch"]["value"], r["cell"]["pass"]["name"])
        m = r["metrics"]
        assert m["ms/call"] > 0 and m["Mparams"] == pytest.approx(n_params / 1e6)
        assert m["ms/image"] == pytest.approx(m["ms/call"] / key[1])
        assert r["identity"]["threads"] == want and r["machine"]["threads"] == want
        cells.setdefault(key, []).append(m["ms/call"])
    assert sorted(cells) == [("tiny", b, p) for b in (1, 2)
                             for p in ("forward", "forward+backward")]
    body = [r for r in csv.DictReader(line for line in
                                      (tmp_path / "out" / "speed.csv").read_text().splitlines()
                                      if not line.startswith("#"))]
    for (cfg, b, p), xs in cells.items():
        (r,) = [x for x in body if (x["config"], x["batch"], x["pass"], x["column"])
                == (cfg, str(b), p, "ms/call")]
        s = sorted(xs)  # n = 6: the 95% interval is [x_(1), x_(6)] (coverage 1 - 2/64)
        assert r["statistic"] == "median"
        assert float(r["value"]) == pytest.approx(statistics.median(xs), rel=1e-12)
        assert (float(r["ci_low"]), float(r["ci_high"])) == (s[0], s[-1])
    md = (tmp_path / "out" / "speed.md").read_text()
    assert "| config | batch | pass | ms/call | ms/image | Mparams | N |" in md
    assert "median [95% order-statistic interval] over repeats" in md


@pytest.mark.parametrize("change, err, match", [
    ({"passes": ("backward",)}, UnknownNameError, "unknown pass 'backward'"),
    ({"batches": (0,)}, BenchConfigError, "positive integer"),
    ({"configs": ({**TINY, "widths": 3},)}, BenchConfigError, "config 'tiny'.*widths"),
    ({"configs": ({**TINY, "image_size": 7},)}, BenchConfigError, "not divisible"),
    ({"metrics": ["fps"]}, UnknownNameError, "unknown network-speed metric 'fps'"),
    ({"calls": 0}, BenchConfigError, "calls must be an integer >= 1"),
    ({"dtype": "int8"}, UnknownNameError, "unknown dtype 'int8'"),
])
def test_bad_network_speed_tasks_fail_clearly(tmp_path, change, err, match):
    with pytest.raises(err, match=match):
        run_benchmark(write_task(tmp_path, **change), progress=False)
    assert not (tmp_path / "out").exists()


def test_shipped_task_file_is_valid():
    plan = load_plan(REPO / "benchmarks" / "tasks" / "network_speed.toml")
    assert plan.out_dir == (REPO / "benchmarks").resolve() and plan.name == "network_speed"
    assert {c["batch"].value for c in plan.cells} == {1, 64}
    assert {c["pass"].name for c in plan.cells} == {"forward", "forward+backward"}
    ctx = RunContext(plan.name, plan.kind.name, plan.seed, plan.device, dict(plan.options),
                     list(plan.metrics))
    plan.kind.validate(ctx, plan.cells)  # every config builds a UNet (on the meta device)
