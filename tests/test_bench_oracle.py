"""The restore kind's trace columns: "oracle" (DMPlug's best-PSNR iterate, never its result) and
"trace:KEY", with a tiny trained-and-exported prior and a stand-in data split (32x32)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import diffinv.data
from diffinv.bench import run_benchmark
from diffinv.bench.kinds.restore import derived_seed, trace_key
from diffinv.bench.records import read_records
from diffinv.data import ImageSet
from diffinv.metrics import psnr
from diffinv.physics import measure
from diffinv.seeding import image_generators

DMPLUG = {"name": "dmplug", "iterations": 6, "early_stop": "wmv", "window": 2, "patience": 2,
          "label": "DMPlug"}


def fake_split(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed(7)
    return ImageSet("fashion32", split, torch.rand((4, 1, 32, 32), generator=g) * 2 - 1,
                    torch.arange(4))


def test_trace_metric_names():
    assert trace_key("oracle") == "oracle_psnr"
    assert trace_key("trace:iterations_run") == "iterations_run"
    assert trace_key("psnr") is None


def test_oracle_column_is_the_best_iterate_and_the_result_ignores_the_truth(
        tmp_path, tiny_prior, monkeypatch):
    from diffinv import load_prior
    from diffinv.solvers import make_solver

    monkeypatch.setattr(diffinv.data, "load_split", fake_split)
    methods = [DMPLUG, {"name": "dps", "steps": 2, "label": "DPS"}]
    value = lambda v: ("{" + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + "}")  # noqa: E731
    (tmp_path / "t.toml").write_text("\n".join([
        f"methods = [{', '.join(value(m) for m in methods)}]",
        'tasks = [{name = "sr4", operator = "sr-avgpool", noise = "gaussian:0.01"}]',
        f'priors = [{{name = "toy", path = {json.dumps(str(tiny_prior))}}}]',
        'metrics = ["psnr", "oracle", "oracle_gap", "trace:iterations_run", "trace:psnr@1", '
        '"trace:psnr@99999"]',
        "[run]", 'name = "t"', 'dataset = "fashion32:valid"', "n_images = 2", "batch_size = 2",
    ]) + "\n")
    run_benchmark(tmp_path / "t.toml", progress=False)
    rows = {(r["cell"]["method"]["label"], r["index"]): r
            for r in read_records(tmp_path / "t.jsonl")[0]}
    assert len(rows) == 4

    # the same batch solved directly, with and without the truth: bit-identical outputs
    x = fake_split("fashion32", "valid").images[:2]
    m = measure(x, "sr-avgpool", "gaussian:0.01", 0, [0, 1], domain="toy")
    prior = load_prior(tiny_prior)
    params = {k: v for k, v in DMPLUG.items() if k not in ("name", "label")}
    seed = derived_seed(0, "solver")
    solver = make_solver("dmplug", **params)
    with_truth = solver(m.y, m.public(), prior, seed=image_generators(seed, [0, 1]), truth=x)
    without = solver(m.y, m.public(), prior, seed=image_generators(seed, [0, 1]))
    assert torch.equal(with_truth.x, without.x)
    assert "oracle_psnr" not in without.trace

    for i in range(2):
        dm, dps = rows[("DMPlug", i)]["metrics"], rows[("DPS", i)]["metrics"]
        assert dm["psnr"] == pytest.approx(float(psnr(without.x[i:i + 1], x[i:i + 1])), abs=1e-4)
        assert dm["oracle"] == pytest.approx(float(with_truth.trace["oracle_psnr"][i]), abs=1e-9)
        # the oracle is the best PSNR over the iterates; the output is one of them
        assert dm["oracle"] >= dm["psnr"] - 1e-3
        assert dm["oracle"] == pytest.approx(float(with_truth.trace["psnr"][:, i].max()))
        assert dm["oracle_gap"] == pytest.approx(dm["oracle"] - dm["psnr"], abs=1e-9)
        assert dm["trace:iterations_run"] == float(without.trace["iterations_run"][i])
        # KEY@I: row I of a per-iteration log; NaN past the end of the run
        assert dm["trace:psnr@1"] == pytest.approx(float(with_truth.trace["psnr"][1, i]), abs=1e-9)
        assert math.isnan(dm["trace:psnr@99999"]) and math.isnan(dps["trace:psnr@1"])
        assert math.isnan(dps["oracle"]) and math.isnan(dps["trace:iterations_run"])
        assert math.isnan(dps["oracle_gap"])
        assert not math.isnan(dps["psnr"])


def test_the_truth_goes_to_the_solver_only_for_columns_that_need_it():
    from diffinv.bench.kinds.restore import _evaluation_kwargs
    from diffinv.solvers import make_solver

    x = torch.zeros(1, 1, 32, 32)
    dmplug, dps = make_solver("dmplug"), make_solver("dps")
    for metrics in (["psnr", "oracle"], ["trace:wmv_50_100_psnr"], ["trace:oracle_iteration"],
                    ["psnr", "oracle_gap"]):
        assert _evaluation_kwargs(dmplug, metrics, x)["truth"] is x
        assert _evaluation_kwargs(dps, metrics, x) == {}
    for metrics in (["psnr", "ssim"], ["trace:iterations_run", "trace:wmv_50_100_iterations_run"]):
        assert _evaluation_kwargs(dmplug, metrics, x) == {}


def test_a_row_of_a_per_iteration_log_needs_one():
    from diffinv.bench.errors import BenchConfigError
    from diffinv.bench.kinds.restore import _from_trace
    from diffinv.errors import DiffinvError

    trace = {"psnr": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "iterations_run": torch.tensor([2, 2])}
    assert _from_trace(trace, "psnr@1", 2) == [3.0, 4.0]
    assert all(math.isnan(v) for v in _from_trace(trace, "psnr@2", 2))
    with pytest.raises(BenchConfigError, match="iteration number"):
        _from_trace(trace, "psnr@last", 2)
    with pytest.raises(DiffinvError, match="per-iteration log"):
        _from_trace(trace, "iterations_run@0", 2)


def test_a_prior_entry_may_set_the_precision():
    from diffinv.bench.errors import BenchConfigError
    from diffinv.bench.kinds.common import prior_source
    from diffinv.bench.spec import Entry

    assert prior_source(Entry.parse("prior", {"name": "fashion32", "precision": "bf16"})) == "fashion32"
    with pytest.raises(BenchConfigError, match="precision"):
        prior_source(Entry.parse("prior", {"name": "fashion32", "precision": "int8"}))
    with pytest.raises(BenchConfigError, match="unknown key"):
        prior_source(Entry.parse("prior", {"name": "fashion32", "dtype": "bf16"}))
