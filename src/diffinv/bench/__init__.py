"""Benchmarks: task files, a resumable sharded runner, and the tables it renders.

``diffinv bench FILE.toml`` (see :mod:`diffinv.cli.bench` and ``benchmarks/README.md``) expands
the grid of a task file into units of work, appends one JSON row per unit as it goes (a rerun
skips the units that have a row), and renders ``NAME.md`` / ``NAME.csv`` with a mean (or median),
a 95% interval and N per cell. What a unit *is* comes from a job kind (:mod:`diffinv.bench.jobs`):
"restore" (solve an inverse problem and score it), "network-speed" (time a UNet) and the others
of :mod:`diffinv.bench.kinds` are built in, and :func:`register_job_kind` adds more without
touching the runner. ``diffinv bench --help`` prints the task-file format
(:mod:`diffinv.bench.taskformat`).
"""

from diffinv.bench.catalog import get_job_kind, job_kinds
from diffinv.bench.errors import BenchConfigError, BenchRecordError
from diffinv.bench.jobs import (
    REQUIRED,
    JobKind,
    RunContext,
    UnitResult,
    register_job_kind,
    unregister_job_kind,
)
from diffinv.bench.plan import Plan, load_plan, parse_shard
from diffinv.bench.runner import Outcome, run_benchmark
from diffinv.bench.spec import Axis, Cell, Entry

__all__ = [
    "REQUIRED", "Axis", "BenchConfigError", "BenchRecordError", "Cell", "Entry", "JobKind",
    "Outcome", "Plan", "RunContext", "UnitResult", "get_job_kind", "job_kinds", "load_plan",
    "parse_shard", "register_job_kind", "run_benchmark", "unregister_job_kind",
]
