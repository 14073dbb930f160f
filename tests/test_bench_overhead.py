"""The "overhead" job kind: solver time over the time of its bare network passes, on a tiny
trained-and-exported prior with tiny step counts (the real task is benchmarks/tasks/overhead.toml).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from diffinv.bench import BenchConfigError, load_plan, run_benchmark
from diffinv.bench.kinds.overhead import PROFILE, HookTimers, bare_passes
from diffinv.bench.records import read_records
from diffinv.errors import UnknownNameError


def write_task(d: Path, prior: Path, metrics=None, **run) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = [
        'methods = [{name = "dps", steps = 3, label = "DPS"}, '
        '{name = "ddrm", steps = 2, label = "DDRM"}]',
        'tasks = [{name = "deblur", operator = "gaussian-blur", noise = "gaussian:0.05"}]',
        f'priors = [{{name = "toy", path = {json.dumps(str(prior))}}}]',
        f"batch_sizes = {json.dumps(run.pop('batch_sizes', [1, 2]))}",
    ]
    if metrics is not None:
        lines.append(f"metrics = {json.dumps(metrics)}")
    run = {"name": "oh", "kind": "overhead", "repeats": 2, "batch_size": 2, "warmup": 0, **run}
    lines.append("[run]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in run.items()]
    p = d / "oh.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_rows_hold_the_ratio_the_pass_counts_and_the_profile_split(tmp_path, tiny_prior):
    task = write_task(tmp_path, tiny_prior)
    out = run_benchmark(task, progress=False)
    rows = read_records(tmp_path / "oh.jsonl")[0]
    assert len(rows) == 2 * 2 * 2  # 2 methods x 2 batch sizes x 2 repeats
    for r in rows:
        m, method = r["metrics"], r["cell"]["method"]["label"]
        assert m["ratio"] == pytest.approx(m["solver_s"] / m["network_s"], rel=1e-9)
        assert m["overhead_ms/step"] == pytest.approx(
            1000 * (m["solver_s"] - m["network_s"]) / r["nfe"], rel=1e-9)
        assert r["seconds"] == m["solver_s"] and m["network_s"] > 0
        assert sum(m[k] for k in PROFILE) == pytest.approx(1.0, abs=1e-9)
        assert all(0 <= m[k] <= 1 for k in ("net_fwd", "net_bwd", "op"))
        if method == "DPS":  # 3 ancestral steps, each with a gradient through the network
            assert r["nfe"] == 3 and r["extra"]["backward_nfe"] == 3
            assert m["net_bwd"] > 0 and m["op"] > 0
        else:  # DDRM: forward passes only; the operator acts through its SVD ("rest")
            assert r["nfe"] == 2 and r["extra"]["backward_nfe"] == 0
            assert m["net_bwd"] == 0 and m["op"] == 0
        assert r["cell"]["prior"]["resolved"]["sha256"]
    text = (tmp_path / "oh.md").read_text()
    assert "ratio" in text and out.report is not None


def test_bare_passes_do_the_backward_passes_first_then_forward_only():
    calls = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()), requires_grad=False)

        def forward(self, x, t):
            calls.append((torch.is_grad_enabled() and x.requires_grad, int(t[0])))
            return x * self.w * 2

    x, v = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    labels = [torch.full((3,), t) for t in (9, 5, 1, 0)]
    assert bare_passes(Recorder(), x, v, labels, n_backward=1) >= 0
    assert calls == [(True, 9), (False, 5), (False, 1), (False, 0)]


def test_hook_timers_measure_forward_and_backward_time():
    class Slow(nn.Module):
        def forward(self, x):
            time.sleep(0.03)
            return x * 2

    m = Slow()
    timers = HookTimers(torch.device("cpu"))
    timers.watch(m, "m")
    x = torch.ones(2, requires_grad=True)
    m(x).sum().backward()
    with torch.no_grad():
        m(x)
    assert timers.seconds["m_fwd"] >= 0.06 and 0 <= timers.seconds["m_bwd"] < 0.03
    timers.remove()
    m(x)
    assert timers.seconds["m_fwd"] < 0.09 + 0.03  # removed hooks no longer count


@pytest.mark.parametrize("change, error", [
    ({"metrics": ["ratio", "op"], "profile": False}, BenchConfigError),
    ({"metrics": ["ratio", "speedup"]}, UnknownNameError),
    ({"batch_sizes": [0]}, BenchConfigError),
    ({"warmup": -1}, BenchConfigError),
])
def test_bad_task_files_are_refused_before_any_work(tmp_path, tiny_prior, change, error):
    change = dict(change)
    task = write_task(tmp_path, tiny_prior, metrics=change.pop("metrics", None), **change)
    with pytest.raises(error):
        run_benchmark(task, progress=False)
    assert not (tmp_path / "oh.jsonl").exists()


def test_the_committed_task_file_validates():
    plan = load_plan(Path(__file__).parents[1] / "benchmarks" / "tasks" / "overhead.toml")
    assert plan.kind.name == "overhead"
    assert {c["batch"].value for c in plan.cells} == {1, 64}
    assert {c["method"].name for c in plan.cells} == {"dps", "ddrm"}
