"""The "dmplug-cost" job kind (iterations to the ES-WMV stop, NFE, seconds, peak memory with and
without checkpointing) on a tiny trained-and-exported prior and a stand-in data split (32x32),
with a few iterations and a small ES-WMV window (the real task is
benchmarks/tasks/dmplug_cost.toml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import diffinv.data
from diffinv.bench import run_benchmark
from diffinv.bench.kinds.dmplug_cost import METRICS
from diffinv.bench.kinds.restore import derived_seed
from diffinv.bench.records import read_records
from diffinv.data import ImageSet
from diffinv.errors import DiffinvError
from diffinv.physics import measure
from diffinv.seeding import image_generators

ITERATIONS = 8
COMMON = {"name": "dmplug", "iterations": ITERATIONS, "early_stop": "wmv", "window": 2,
          "patience": 2}
METHODS = [
    {**COMMON, "steps": 3, "checkpoint": False, "label": "S3"},
    {**COMMON, "steps": 3, "checkpoint": True, "label": "S3 ckpt"},
    {**COMMON, "steps": 10, "checkpoint": False, "label": "S10"},
    {**COMMON, "steps": 10, "checkpoint": True, "label": "S10 ckpt"},
]
TASK = {"name": "sr4", "operator": "sr-avgpool", "factor": 4, "noise": "gaussian:0.01"}


def fake_split(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed(11)
    return ImageSet("fashion32", split, torch.rand((3, 1, 32, 32), generator=g) * 2 - 1,
                    torch.arange(3))


def _table(v: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + "}"


def write_task(d: Path, prior: Path, methods=METHODS, metrics=None, n_images: int = 2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"methods = [{', '.join(_table(m) for m in methods)}]",
             f"tasks = [{_table(TASK)}]",
             f'priors = [{{name = "toy", path = {json.dumps(str(prior))}}}]']
    if metrics is not None:
        lines.append(f"metrics = {json.dumps(metrics)}")
    lines += ["[run]", 'name = "cost"', 'kind = "dmplug-cost"', 'dataset = "fashion32:valid"',
              f"n_images = {n_images}", "batch_size = 2"]
    p = d / "cost.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_prior):
    d = tmp_path_factory.mktemp("dmplug-cost")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffinv.data, "load_split", fake_split)
        run_benchmark(write_task(d, tiny_prior), progress=False)
    out = {(r["cell"]["method"]["label"], r["index"]): r for r in read_records(d / "cost.jsonl")[0]}
    assert len(out) == len(METHODS) * 2
    out["_md"] = (d / "cost.md").read_text()
    return out


def _params(label: str) -> dict:
    m = next(m for m in METHODS if m["label"] == label)
    return {k: v for k, v in m.items() if k not in ("name", "label")}


def test_rows_hold_every_column_and_the_stop_is_within_the_budget(rows):
    for key, r in rows.items():
        if key == "_md":
            continue
        m = r["metrics"]
        assert set(m) == set(METRICS)
        assert m["iterations"] == ITERATIONS
        assert 0 <= m["picked_iteration"] <= m["stop_iteration"] <= m["iterations"]
        assert 1 <= m["iterations_run"] <= m["iterations"]
        if m["stopped"]:  # ES-WMV's stop: the check at which it stopped ends the run
            assert m["iterations_run"] == m["stop_iteration"] + 1
            assert m["stop_iteration"] >= m["picked_iteration"] + COMMON["patience"]
        else:
            assert m["stop_iteration"] == m["iterations"] == m["iterations_run"]
        assert r["seconds"] > 0 and m["peak_mem_MiB"] > 0
        assert m["seconds/iteration"] == pytest.approx(r["seconds"] / m["iterations_run"])
        assert r["cell"]["prior"]["resolved"]["sha256"]
    # W = P = 2 on 8 iterations: ES-WMV stops at least once here (the stop path is exercised)
    assert any(r["metrics"]["stopped"] for k, r in rows.items() if k != "_md")
    md = rows["_md"]
    assert "peak_mem_MiB" in md and "NFE" in md and "S3 ckpt" in md


@pytest.mark.parametrize("label", [m["label"] for m in METHODS])
def test_nfe_counts_the_recomputation_under_checkpointing(rows, label):
    p = _params(label)
    for i in range(2):
        r = rows[(label, i)]
        per_iteration = p["steps"] * (2 if p["checkpoint"] else 1)
        assert r["nfe"] == per_iteration * r["metrics"]["iterations_run"]
        assert r["extra"]["backward_nfe"] == p["steps"] * r["metrics"]["iterations_run"]


def test_checkpointing_gives_the_same_iterates(rows, tiny_prior):
    from diffinv import load_prior
    from diffinv.solvers import make_solver

    for i in range(2):  # the rows: the same stop and pick with and without checkpointing
        for s in ("S3", "S10"):
            a, b = rows[(s, i)]["metrics"], rows[(f"{s} ckpt", i)]["metrics"]
            for k in ("stop_iteration", "picked_iteration", "iterations_run"):
                assert a[k] == b[k]
            ea, eb = rows[(s, i)]["extra"], rows[(f"{s} ckpt", i)]["extra"]
            for k in ("loss_first", "loss_picked"):
                assert eb[k] == pytest.approx(ea[k], rel=1e-4)
    prior = load_prior(tiny_prior)
    x = fake_split("fashion32", "valid").images[:1]
    m = measure(x, "sr-avgpool", "gaussian:0.01", 0, [0], domain="toy")
    seed = derived_seed(0, "solver")
    out = {}
    for label in ("S3", "S3 ckpt"):
        iterates: list[torch.Tensor] = []
        r = make_solver("dmplug", **_params(label))(
            m.y, m.public(), prior, seed=image_generators(seed, [0]),
            callback=lambda it, xi, acc=iterates: acc.append(xi.clone()))
        out[label] = (r, torch.stack(iterates))
    (r0, it0), (r1, it1) = out["S3"], out["S3 ckpt"]
    assert it0.shape == it1.shape and len(it0) >= 3
    assert torch.allclose(it0, it1, atol=1e-5, rtol=0)
    assert torch.allclose(r0.x, r1.x, atol=1e-5, rtol=0)
    assert torch.allclose(r0.trace["loss"], r1.trace["loss"], rtol=1e-4, atol=1e-9)


def test_checkpointing_lowers_the_peak_and_the_peak_grows_with_s_without_it(rows):
    for i in range(2):
        peak = {label: rows[(label, i)]["metrics"]["peak_mem_MiB"] for label in
                ("S3", "S3 ckpt", "S10", "S10 ckpt")}
        assert peak["S3 ckpt"] < peak["S3"]
        assert peak["S10"] > peak["S3"]
        # with checkpointing only each step's input image is kept: the growth with S is a small
        # fraction of the growth without it
        assert peak["S10 ckpt"] - peak["S3 ckpt"] < 0.25 * (peak["S10"] - peak["S3"])


def test_the_measurement_is_restores_and_batching_does_not_change_the_stop(rows, tiny_prior):
    """The kind solves image by image; the same images solved as one batch with restore's
    measurement (run seed, indices) and solver streams stop and pick at the same iterations."""
    from diffinv import load_prior
    from diffinv.solvers import make_solver

    x = fake_split("fashion32", "valid").images[:2]
    m = measure(x, "sr-avgpool", "gaussian:0.01", 0, [0, 1], domain="toy")
    r = make_solver("dmplug", **_params("S3"))(
        m.y, m.public(), load_prior(tiny_prior),
        seed=image_generators(derived_seed(0, "solver"), [0, 1]))
    for i in range(2):
        row = rows[("S3", i)]["metrics"]
        assert row["picked_iteration"] == int(r.trace["picked_iteration"][i])
        stop = int(r.trace["stop_iteration"][i])
        assert row["stop_iteration"] == (stop if stop >= 0 else ITERATIONS)
        # the same y and z: the same loss at the first and at the picked iterate
        extra = rows[("S3", i)]["extra"]
        assert extra["loss_first"] == pytest.approx(float(r.trace["loss"][0, i]), rel=1e-4)
        assert extra["loss_picked"] == pytest.approx(
            float(r.trace["loss"][int(row["picked_iteration"]), i]), rel=1e-4)


@pytest.mark.parametrize("method, metrics, needle", [
    ({**COMMON, "stepz": 3, "label": "typo"}, None, "stepz"),
    ({"name": "dps", "steps": 2, "label": "DPS"}, None, "DMPlug only"),
    ({**COMMON, "optimizer": "lbfgs", "label": "lbfgs"}, None, "Adam"),
    ({**COMMON, "window": 1, "label": "W1"}, None, "window"),
    ({**COMMON, "label": "ok"}, ["psnr"], "psnr"),
])
def test_bad_task_files_are_refused_before_anything_is_written(tmp_path, tiny_prior,
                                                                 monkeypatch, method, metrics,
                                                                 needle):
    monkeypatch.setattr(diffinv.data, "load_split", fake_split)
    task = write_task(tmp_path / "t", tiny_prior, methods=[method], metrics=metrics)
    with pytest.raises(DiffinvError, match=needle):
        run_benchmark(task, progress=False)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["cost.toml"]


def test_n_images_beyond_the_split_is_refused(tmp_path, tiny_prior, monkeypatch):
    monkeypatch.setattr(diffinv.data, "load_split", fake_split)
    task = write_task(tmp_path / "t", tiny_prior, methods=[{**COMMON, "label": "ok"}],
                      n_images=4)
    with pytest.raises(DiffinvError, match="exceeds"):
        run_benchmark(task, progress=False)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["cost.toml"]
