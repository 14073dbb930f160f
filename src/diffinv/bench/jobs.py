"""Job kinds: what one unit of benchmark work is, and the registry that names them.

A job kind is a function ``fn(ctx, cell, indices) -> list[UnitResult]`` that does the work of
``len(indices)`` units of one grid cell at once (a batch of images, or repeated timings) and
returns one :class:`UnitResult` per index, plus a description of its grid: its axes, what the
replicate index counts, its own ``[run]`` options and which of them identify a result, and the
statistic its tables report. The runner knows nothing else about it, so a later issue adds a kind
with :func:`register_job_kind` and no change to the runner.

This module is the registry only: it imports no kind. Built-in kinds ("restore",
"network-speed", ...) live in :mod:`diffinv.bench.kinds` and register when imported;
:mod:`diffinv.bench.catalog` looks a kind up by name, importing them on first use, and imports the
modules named in ``[run] plugins`` first, so a task file can use kinds defined elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.spec import Axis, Cell, Entry

STATISTICS = ("mean", "median")


@dataclass
class UnitResult:
    """What one unit produced: named metric values, network evaluations, wall seconds, extras."""

    metrics: dict[str, float]
    nfe: float | None = None
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a job function sees of the run. ``cache`` lives as long as the run (load once)."""

    name: str
    kind: str
    seed: int
    device: str
    options: dict[str, Any]
    metrics: list[str]
    shard: tuple[int, int] = (0, 1)
    cache: dict[str, Any] = field(default_factory=dict)

    def cached(self, key: str, factory: Callable[[], Any]) -> Any:
        """``factory()`` the first time ``key`` is asked for in this run, the same object after."""
        if key not in self.cache:
            self.cache[key] = factory()
        return self.cache[key]


JobFn = Callable[[RunContext, Cell, Sequence[int]], Sequence[UnitResult]]
ValidateFn = Callable[[RunContext, Sequence[Cell]], None]
ResolveFn = Callable[[RunContext, str, Entry, Cell], Mapping[str, Any]]


@dataclass(frozen=True)
class JobKind:
    """A registered job kind.

    name: the ``[run] kind`` value.
    run: the job function.
    axes: grid axes (``"method"`` means key ``methods`` in the file, ``method`` in a cell).
    replicate: what the unit index counts ("image", "repeat"); ``target_key`` is the ``[run]``
        (and ``[[cell]]``) key giving how many, with default ``default_target``.
    options: the kind's own ``[run]`` keys and their defaults (``REQUIRED`` if none); any other
        key is rejected as a typo.
    identity: ``[run]`` keys whose values identify a result (with the seed, cell and index): a
        row computed under other values is not reused.
    metrics: the metric names used when the task file gives none (``None``: a list is required).
    statistic: "mean" (95% t interval over replicates) or "median" (95% order-statistic interval).
    validate: checks names and options before anything is written (raises a DiffinvError).
    resolve: ``resolve(ctx, axis, entry, cell)``: extra identity of an axis value in a cell,
        computed at run time (e.g. a prior's SHA-256, or what a method's preset sets for the
        cell's operator); it is part of the unit key and stored in every row.
    rehearse: ``rehearse(ctx, cells)``, called after ``resolve`` with the cells that have work
        to do and before the first row is written: tries each cell as far as it can go without
        real work (restore: every check a solver makes on entry), so a cell that would fail at
        its first unit stops the run before any row (raises a DiffinvError).
    description: one line on what a unit is (``diffinv bench --help`` prints it).
    help: one line per key, for ``diffinv bench --help``: the kind's ``[run]`` options, its
        target key, its axes (what a value of that axis is, by the axis name) and "metrics"
        (which metric names it takes).
    """

    name: str
    run: JobFn
    axes: tuple[Axis, ...] = (Axis("method", "methods"), Axis("task", "tasks"),
                              Axis("prior", "priors"))
    replicate: str = "image"
    target_key: str = "n_images"
    default_target: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    identity: tuple[str, ...] = ()
    metrics: tuple[str, ...] | None = None
    statistic: str = "mean"
    validate: ValidateFn | None = None
    resolve: ResolveFn | None = None
    rehearse: ValidateFn | None = None
    description: str = ""
    help: Mapping[str, str] = field(default_factory=dict)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_KINDS: dict[str, JobKind] = {}


def register_job_kind(name: str, fn: JobFn, *, replace: bool = False, **spec: Any) -> JobKind:
    """Register job function ``fn`` as kind ``name``; ``spec`` sets the other :class:`JobKind`
    fields (``axes`` may be given as names such as ``("method", "task")``). Returns the kind."""
    if not isinstance(name, str) or not name:
        raise BenchConfigError("a job kind needs a non-empty name")
    if name in _KINDS and not replace:
        raise BenchConfigError(f"job kind {name!r} is already registered")
    if "axes" in spec:
        spec["axes"] = tuple(Axis.of(a) for a in spec["axes"])
        if not spec["axes"]:
            raise BenchConfigError(f"job kind {name!r} needs at least one axis")
    for k in ("identity", "metrics"):
        if spec.get(k) is not None:
            spec[k] = tuple(spec[k])
    kind = JobKind(name=name, run=fn, **spec)
    if kind.statistic not in STATISTICS:
        raise BenchConfigError(f"job kind {name!r}: statistic must be one of {STATISTICS}")
    stray = sorted(set(kind.help) - set(kind.options) - {kind.target_key, "metrics"}
                   - {a.name for a in kind.axes})
    if stray:
        raise BenchConfigError(f"job kind {name!r}: help for {stray}, which are neither its "
                               "options, its target key, its axes nor metrics")
    _KINDS[name] = kind
    return kind


def unregister_job_kind(name: str) -> None:
    """Remove a kind (tests register throwaway kinds)."""
    _KINDS.pop(name, None)


def registered_kinds() -> dict[str, JobKind]:
    """Every kind registered so far, by name (the built-in ones once
    :mod:`diffinv.bench.kinds` is imported: :func:`diffinv.bench.catalog.get_job_kind`)."""
    return dict(_KINDS)
