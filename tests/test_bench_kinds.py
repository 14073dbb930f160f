"""Job kinds used by the benchmark-runner tests (importable as the plugin ``test_bench_kinds``),
and tests of the job-kind registry.

``toy``: axes method/task/prior; every metric value is a deterministic function of (method,
its params, task, prior, the prior's "weights" file content, seed, index), so a resumed, sharded
or re-batched run must give exactly the rows of a plain run. Options: ``sleep`` (seconds per
unit, to let a test kill a run half-way) and ``fail_at`` (raise when asked for that index).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from diffinv.bench import (
    BenchConfigError,
    UnitResult,
    get_job_kind,
    job_kinds,
    register_job_kind,
    unregister_job_kind,
)
from diffinv.errors import UnknownNameError

TOY_METHODS = ("alpha", "beta", "gamma")
TOY_METRICS = ("score", "index", "square")


def toy_value(method: str, params: dict, task: str, prior: str, weights_sha: str, seed: int,
              index: int) -> float:
    """A number in [0, 100) from SHA-256 of the unit's identity."""
    text = f"{method}|{sorted(params.items())}|{task}|{prior}|{weights_sha}|{seed}|{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "little") / 2**48 * 100


def _weights_sha(entry) -> str:
    path = entry.params.get("weights")
    if path is None:
        return hashlib.sha256(entry.name.encode()).hexdigest()
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def toy_run(ctx, cell, indices):
    out = []
    m, t, p = cell["method"], cell["task"], cell["prior"]
    for i in indices:
        if i == ctx.options["fail_at"]:
            raise RuntimeError(f"injected failure at index {i}")
        time.sleep(ctx.options["sleep"])
        v = toy_value(m.name, dict(m.params), t.name, p.name, _weights_sha(p), ctx.seed, i)
        out.append(UnitResult(metrics={"score": v, "index": float(i), "square": float(i * i)},
                              nfe=float(len(m.name)), seconds=0.5))
    return out


def toy_validate(ctx, cells):
    for name in ctx.metrics:
        if name not in TOY_METRICS:
            raise UnknownNameError("metric", name, TOY_METRICS)
    for cell in cells:
        if cell["method"].name not in TOY_METHODS:
            raise UnknownNameError("method", cell["method"].name, TOY_METHODS)


def toy_resolve(ctx, axis, entry, cell):
    return {"sha256": _weights_sha(entry)} if axis == "prior" else {}


register_job_kind("toy", toy_run, replace=True, options={"sleep": 0.0, "fail_at": -1},
                  validate=toy_validate, resolve=toy_resolve, identity=())


# ------------------------------------------------------------------------------------------ tests
def test_registry_lookup_and_builtins():
    assert get_job_kind("toy").run is toy_run
    names = job_kinds()
    assert {"toy", "restore", "network-speed"} <= set(names)


def test_registry_rejects_duplicates_and_unknown_names():
    register_job_kind("toy-dup", toy_run)
    try:
        with pytest.raises(BenchConfigError, match="already registered"):
            register_job_kind("toy-dup", toy_run)
    finally:
        unregister_job_kind("toy-dup")
    with pytest.raises(UnknownNameError, match="unknown job kind 'nope'.*toy"):
        get_job_kind("nope")
    with pytest.raises(BenchConfigError, match="statistic"):
        register_job_kind("toy-bad", toy_run, statistic="mode")
    assert "toy-bad" not in job_kinds()
