"""A run plan: the task file checked against its job kind, its cells, and the unit keys.

``[run]`` keys every kind accepts are those of :data:`COMMON_KEYS` (their defaults; what each
means is :data:`COMMON_KEY_HELP`, which ``diffinv bench --help`` prints), plus the kind's target
key (``n_images`` for "restore") and its own options.

A unit is (cell, index) with 0 <= index < the cell's target. Its key is a digest of the job kind,
the seed, the kind's identifying options, the digest of each axis value, the resolved identity of
each axis value (e.g. a prior's weight SHA-256) and the index: a row is reused exactly when all of
these agree. The *cell key* leaves out the index and the resolved identities; the report groups
rows by it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffinv.bench.catalog import get_job_kind, import_plugins
from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import REQUIRED, JobKind
from diffinv.bench.spec import Cell, TaskFile, digest, expand_grid, read_task_file

COMMON_KEYS = {"name": None, "kind": "restore", "title": None, "notes": "", "seed": 0,
               "output": None, "batch_size": 1, "device": "cpu", "plugins": [], "reuse": []}

#: one line per key of :data:`COMMON_KEYS`
COMMON_KEY_HELP = {
    "name": "run name: file names NAME.jsonl / NAME.md / NAME.csv (default: the task file's stem)",
    "kind": "job kind (below)",
    "title": "heading of the report (default: the name)",
    "notes": "text printed under the report header (conventions, what the numbers mean)",
    "seed": "run seed; unit i uses seeds derived from (seed, i)",
    "output": "output directory, relative to the task file (default: the task file's directory)",
    "batch_size": "units handed to the job function at once",
    "device": 'torch device, e.g. "cpu", "cuda" (torchrun: "cuda" -> cuda:LOCAL_RANK)',
    "plugins": "modules to import first (they register job kinds)",
    "reuse": "names of other runs in the same output directory whose rows count as this run's "
             "where their unit key is one of this run's (the same computation)",
}


@dataclass(frozen=True)
class Plan:
    """Everything a run needs to know before doing any work."""

    task: TaskFile
    kind: JobKind
    name: str
    title: str
    notes: str
    seed: int
    out_dir: Path
    batch_size: int
    device: str
    options: dict[str, Any]
    metrics: list[str]
    cells: list[Cell]
    reuse: tuple[str, ...] = ()

    @property
    def identity(self) -> dict[str, Any]:
        """The option values that identify a result (``kind.identity`` keys)."""
        merged = {"device": self.device, "batch_size": self.batch_size, **self.options}
        return {k: merged[k] for k in self.kind.identity}

    def cell_key(self, cell: Cell) -> str:
        return digest({"kind": self.kind.name, "seed": self.seed, "identity": self.identity,
                       "cell": cell.digests}, 32)

    def cell_identity(self, cell: Cell, resolved: Mapping[tuple[str, str], Mapping[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
        """{axis: resolved identity} of ``cell`` from the run's (cell key, axis) map: what its
        rows store and :meth:`unit_key` hashes."""
        key = self.cell_key(cell)
        return {a: dict(resolved.get((key, a), {})) for a, _ in cell}

    def unit_key(self, cell: Cell, index: int, resolved: Mapping[str, Any]) -> str:
        return digest({"kind": self.kind.name, "seed": self.seed, "identity": self.identity,
                       "cell": cell.digests, "resolved": dict(resolved), "index": int(index)}, 32)


def _check_type(key: str, value: Any, types: tuple[type, ...], where: Path) -> None:
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise BenchConfigError(f"{where}: [run] {key} must be {names}; got {value!r}")


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and check a task file; raises a DiffinvError naming the problem, writes nothing."""
    task = read_task_file(path)
    run = task.run
    where = task.path
    plugins = run.get("plugins", [])
    if not isinstance(plugins, list):
        raise BenchConfigError(f"{where}: [run] plugins must be a list of module names")
    import_plugins(plugins)
    kind_name = run.get("kind", COMMON_KEYS["kind"])
    _check_type("kind", kind_name, (str,), where)
    kind = get_job_kind(kind_name)

    known = set(COMMON_KEYS) | set(kind.options) | {kind.target_key}
    unknown = sorted(set(run) - known - {a.key for a in kind.axes} - {a.name for a in kind.axes}
                     - {"metrics"})
    if unknown:
        raise BenchConfigError(f"{where}: unknown [run] key(s) {unknown} for job kind "
                               f"{kind.name!r}; known: {sorted(known)}")
    seed = run.get("seed", 0)
    _check_type("seed", seed, (int,), where)
    batch_size = run.get("batch_size", 1)
    _check_type("batch_size", batch_size, (int,), where)
    if batch_size < 1:
        raise BenchConfigError(f"{where}: [run] batch_size must be >= 1")
    device = run.get("device", "cpu")
    _check_type("device", device, (str,), where)
    _check_device(device, where)
    for key in ("title", "notes", "name", "output"):
        if key in run:
            _check_type(key, run[key], (str,), where)
    name = task.name
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise BenchConfigError(f"{where}: [run] name {name!r} must be a plain file name")
    reuse = run.get("reuse", [])
    if not isinstance(reuse, list) or not all(isinstance(r, str) and r for r in reuse):
        raise BenchConfigError(f"{where}: [run] reuse must be a list of run names")
    for r in reuse:
        if r == name or any(c in r for c in "/\\") or r.startswith("."):
            raise BenchConfigError(f"{where}: [run] reuse names {r!r}: a plain file name of "
                                   "another run (not this one) is expected")
    out = Path(run.get("output") or ".")
    out_dir = out if out.is_absolute() else (task.path.parent / out)

    target = run.get(kind.target_key, kind.default_target)
    if target is None:
        raise BenchConfigError(f"{where}: [run] {kind.target_key} is required")
    _check_type(kind.target_key, target, (int,), where)
    if target < 1:
        raise BenchConfigError(f"{where}: [run] {kind.target_key} must be >= 1")

    options = {}
    for key, default in kind.options.items():
        if key in run:
            options[key] = run[key]
        elif default is REQUIRED:
            raise BenchConfigError(f"{where}: [run] {key} is required for job kind {kind.name!r}")
        else:
            options[key] = default

    cells = expand_grid(task, kind.axes, kind.target_key, target)
    metrics = task.grid.get("metrics", kind.metrics)
    if metrics is None:
        raise BenchConfigError(f"{where}: no 'metrics' list given")
    if (not isinstance(metrics, list | tuple) or not metrics
            or not all(isinstance(m, str) and m for m in metrics)):
        raise BenchConfigError(f"{where}: 'metrics' must be a non-empty list of names")
    if len(set(metrics)) != len(metrics):
        raise BenchConfigError(f"{where}: 'metrics' lists a name twice")

    return Plan(task=task, kind=kind, name=name, title=str(run.get("title") or name),
                notes=str(run.get("notes", "")), seed=seed, out_dir=out_dir.resolve(),
                batch_size=batch_size, device=device, options=options, metrics=list(metrics),
                cells=cells, reuse=tuple(dict.fromkeys(reuse)))


def _check_device(device: str, where: Path) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise BenchConfigError(f"{where}: [run] device {device!r} is not a torch device: "
                               f"{e}") from None


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; ``None`` -> (0, 1)."""
    if spec is None:
        return 0, 1
    parts = str(spec).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise BenchConfigError(f"bad --shard {spec!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise BenchConfigError(f"bad --shard {spec!r}: need N >= 1 and 0 <= I < N")
    return i, n


def select_cells(cells: Sequence[Cell], only: Sequence[str] | None) -> list[Cell]:
    """The cells matching the ``AXIS=VALUE`` filters of ``only`` (all cells when empty).

    AXIS is a grid axis, singular or plural (``prior`` or ``priors``); VALUE matches an entry's
    label or its registry name. Filters on the same axis are alternatives (``method=ddrm
    method=pigdm``: either), filters on different axes must all hold. A filter that names an
    unknown axis or matches no cell is an error that lists what is there.
    """
    cells = list(cells)
    axes = {a for c in cells for a in c.axes}
    wanted: dict[str, set[str]] = {}
    for spec in only or ():
        axis, sep, value = str(spec).partition("=")
        axis, value = axis.strip(), value.strip()
        if not sep or not axis or not value:
            raise BenchConfigError(f"bad --only {spec!r}: expected AXIS=VALUE, e.g. prior=fashion32")
        if axis not in axes and axis.endswith("s") and axis[:-1] in axes:
            axis = axis[:-1]
        if axis not in axes:
            raise BenchConfigError(f"--only {spec!r}: no axis {axis!r}; axes: {sorted(axes)}")
        if not any(value in (c[axis].label, c[axis].name) for c in cells):
            known = sorted({c[axis].label for c in cells})
            raise BenchConfigError(f"--only {spec!r}: no {axis} {value!r}; known: {known}")
        wanted.setdefault(axis, set()).add(value)
    kept = [c for c in cells
            if all({c[a].label, c[a].name} & values for a, values in wanted.items())]
    if not kept:
        raise BenchConfigError(f"--only {list(only or ())}: no cell has all of these")
    return kept


def missing_files(cells: Sequence[Cell]) -> dict[str, tuple[str, str, str]]:
    """Entry digest -> ``(axis, label, path)`` of each axis value of ``cells`` given a ``path``
    (a prior's weights file, relative to the working directory) that does not exist, in grid
    order. A run resolves the values of the cells it computes only, so such a file stops a run
    only where its cells are selected (``--only``, ``--shard``); the report shows its cells as
    not done and names it."""
    out: dict[str, tuple[str, str, str]] = {}
    for cell in cells:
        for axis, entry in cell:
            path = entry.params.get("path")
            if (entry.digest not in out and isinstance(path, str) and path
                    and not Path(path).exists()):
                out[entry.digest] = (axis, entry.label, path)
    return out


def env_rank(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) set by torchrun, or (0, 1)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return 0, 1
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise BenchConfigError(f"bad RANK/WORLD_SIZE environment: {env.get('RANK')!r}/"
                               f"{env.get('WORLD_SIZE')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise BenchConfigError(f"bad RANK/WORLD_SIZE environment: {rank}/{world}")
    return rank, world


def worker_of(shard: tuple[int, int], rank: tuple[int, int]) -> tuple[int, int]:
    """Combine ``--shard i/n`` with torchrun rank r of w: worker i * w + r of n * w."""
    (i, n), (r, w) = shard, rank
    return i * w + r, n * w


def override_device(plan: Plan, device: str | None) -> Plan:
    """``plan`` with its [run] device replaced by ``device`` (``diffinv bench --device``).

    The device stays part of the row identity of the kinds that list it (timings), so rows from
    another device are not mixed into theirs. Raises :class:`BenchConfigError` for a string that
    is not a torch device and for a CUDA device (``device`` or, without it, the task file's) on a
    machine without one: called before a run computes anything, not for ``--report-only``.
    """
    from diffinv.checks import check_device
    from diffinv.errors import DiffinvError

    where = "--device" if device is not None else f"{plan.task.path}: [run] device"
    try:
        check_device(plan.device if device is None else device, where)
    except DiffinvError as e:
        raise BenchConfigError(str(e)) from None
    return plan if device is None else replace(plan, device=device)


def run_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """The device this process uses: a bare "cuda" becomes cuda:LOCAL_RANK under torchrun."""
    env = os.environ if env is None else env
    if device == "cuda" and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return device
