"""Task files: parse the TOML and expand its grid into cells.

A task file has a ``[run]`` table (name, job kind, seed, output directory, replicate count, ...)
and a grid. The grid is given either as lists at the top of the file (or under ``[grid]``)::

    methods = ["dps", {name = "ddrm", steps = 20}]
    tasks   = [{name = "gauss-deblur", operator = "gaussian_blur", noise = "gaussian:0.05"}]
    priors  = ["fashion32"]
    metrics = ["psnr", "ssim"]

whose cells are the Cartesian product methods x tasks x priors, or as ``[[cell]]`` blocks, each a
sub-grid: a block names one value per axis (``method = ...``) or a list (``methods = [...]``); an
axis it leaves out takes the top-level list; a string naming the label of a top-level value
stands for that value; a block may set its own target count (``n_images = 10``). The axes depend
on the job kind (``method/task/prior`` for "restore").

(TOML puts every key written after ``[run]`` inside ``[run]``, so top-level lists must come before
the first table header; a grid key found inside ``[run]`` is reported as such.)

An axis value is a string (``"dps"``), a number (``8``) or a table with ``name`` (the registry
name), optional ``label`` (the name shown in tables; default ``name``) and parameters (all other
keys). Its digest is the first 16 hex digits of SHA-256 over the canonical JSON of
``{"name", "params"}`` (``{"value"}`` for a number): relabelling a value keeps its results,
changing a parameter starts new ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffinv.bench.errors import BenchConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


#: the task-file format in brief, printed by ``diffinv bench --help`` (benchmarks/README.md, which
#: pip does not install, explains it at length)
TASK_FILE_FORMAT = """\
task file format (TOML; grid lists come first: keys written after [run] belong to [run]):

  # a value: a name, or a table of name, optional label (shown) and parameters
  methods = ["dps", {name = "ddrm", eta = 0.85, label = "DDRM"}]
  tasks = [{name = "sr4", operator = "sr-avgpool", factor = 4, noise = "gaussian:0.05"}]
  priors = ["fashion32"]                  # or {name = ..., path = "w.safetensors", precision}
  metrics = ["psnr", "ssim"]

  [[cell]]                                # optional sub-grids instead of the full product
  methods = ["dps", "DDRM"]               # a label of a top-level value stands for it
  tasks = ["sr4"]
  n_images = 20                           # its own target N

  [run]
  name = "linear"                         # writes NAME.jsonl, NAME.md, NAME.csv
  kind = "restore"                        # job kind (default restore)
  seed = 0                                # per-image seeds derive from (seed, image index)
  output = "out"                          # relative to the task file
  dataset = "fashion32:test"              # restore: images 0 .. n_images - 1
  n_images = 50                           # target N per cell
  batch_size = 8                          # images per solver call
  device = "cpu"                          # or "cuda"

Every name, parameter and (method, task) pair is checked, and every cell is tried up to its
solver's first network evaluation (a blind operator, a noise model the solver does not handle,
steps = 0), before anything is written; so is the output folder."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the byte string every digest is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def digest(obj: Any, length: int = 16) -> str:
    """First ``length`` hex digits of SHA-256 over :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Axis:
    """A grid axis: ``name`` is the key in cells and records ("method"), ``key`` the list key."""

    name: str
    key: str

    @classmethod
    def of(cls, spec: str | tuple[str, str] | Axis) -> Axis:
        """``"method"`` -> Axis("method", "methods"); a (name, key) pair is taken as given."""
        if isinstance(spec, Axis):
            return spec
        if isinstance(spec, str):
            return cls(spec, spec + "s")
        name, key = spec
        return cls(name, key)


@dataclass(frozen=True)
class Entry:
    """One value of an axis: a registry ``name`` with ``params``, shown as ``label``."""

    label: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    value: Any = None  # the number, for a numeric value
    digest: str = ""

    @classmethod
    def parse(cls, axis: str, raw: Any) -> Entry:
        if isinstance(raw, bool):
            raise BenchConfigError(f"{axis} value {raw!r}: expected a name, a number or a table")
        if isinstance(raw, str):
            if not raw.strip():
                raise BenchConfigError(f"empty {axis} name")
            return cls(raw, raw, {}, None, digest({"name": raw, "params": {}}))
        if isinstance(raw, int | float):
            return cls(str(raw), str(raw), {}, raw, digest({"value": raw}))
        if isinstance(raw, Mapping):
            if "name" not in raw or not isinstance(raw["name"], str) or not raw["name"].strip():
                raise BenchConfigError(f"{axis} table {dict(raw)!r} needs a string 'name'")
            label = raw.get("label", raw["name"])
            if not isinstance(label, str) or not label.strip():
                raise BenchConfigError(f"{axis} {raw['name']!r}: 'label' must be a non-empty "
                                       "string")
            params = {k: _plain(v) for k, v in raw.items() if k not in ("name", "label")}
            return cls(label, raw["name"], params, None,
                       digest({"name": raw["name"], "params": params}))
        raise BenchConfigError(f"{axis} value {raw!r}: expected a name, a number or a table")

    def describe(self) -> dict[str, Any]:
        """The JSON form stored in every record."""
        out: dict[str, Any] = {"label": self.label, "name": self.name, "digest": self.digest}
        if self.value is not None:
            out["value"] = self.value
        if self.params:
            out["params"] = dict(self.params)
        return out


def _plain(v: Any) -> Any:
    """TOML values as plain JSON-able Python (datetimes are not allowed in a grid)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, str | int | float | bool):
        return v
    raise BenchConfigError(f"value {v!r} of type {type(v).__name__} is not allowed in a grid")


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: an entry per axis, and the target number of replicates."""

    entries: tuple[tuple[str, Entry], ...]
    target: int

    def __getitem__(self, axis: str) -> Entry:
        for name, entry in self.entries:
            if name == axis:
                return entry
        raise KeyError(axis)

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.entries)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(e.label for _, e in self.entries)

    @property
    def digests(self) -> dict[str, str]:
        return {a: e.digest for a, e in self.entries}

    def __iter__(self) -> Iterator[tuple[str, Entry]]:
        return iter(self.entries)


@dataclass(frozen=True)
class TaskFile:
    """A parsed task file: ``run`` options, top-level ``grid`` lists, ``[[cell]]`` blocks."""

    path: Path
    run: dict[str, Any]
    grid: dict[str, Any]
    blocks: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return str(self.run.get("name") or self.path.stem)


def read_task_file(path: str | Path) -> TaskFile:
    """Parse a task file; a missing file or malformed TOML raises :class:`BenchConfigError`."""
    p = Path(path)
    if p.is_dir():
        raise BenchConfigError(f"{p} is a folder; a task file (a .toml file) is expected, e.g. "
                               "benchmarks/tasks/linear.toml")
    if not p.is_file():
        raise BenchConfigError(f"task file not found: {p}")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BenchConfigError(f"malformed TOML in {p}: {e}") from None
    except OSError as e:
        raise BenchConfigError(f"cannot read task file {p}: {e.strerror or e}") from None
    run = raw.pop("run", None)
    if run is None:
        raise BenchConfigError(f"{p}: missing the [run] table")
    if not isinstance(run, dict):
        raise BenchConfigError(f"{p}: 'run' must be a table")
    grid = raw.pop("grid", {})
    if not isinstance(grid, dict):
        raise BenchConfigError(f"{p}: 'grid' must be a table")
    blocks = raw.pop("cell", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise BenchConfigError(f"{p}: 'cell' must be an array of tables ([[cell]])")
    both = sorted(set(grid) & set(raw))
    if both:
        raise BenchConfigError(f"{p}: {both} given both at the top level and under [grid]")
    grid = {**raw, **grid}
    return TaskFile(p, dict(run), grid, [dict(b) for b in blocks])


def _entries(axis: Axis, values: Any, where: str,
             by_label: Mapping[str, Entry] | None = None) -> list[Entry]:
    """Parse an axis list; in a ``[[cell]]`` block a string that is the label of a top-level
    value of the axis stands for that value."""
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise BenchConfigError(f"{where}: '{axis.key}' is empty")
    by_label = by_label or {}
    return [by_label[v] if isinstance(v, str) and v in by_label else Entry.parse(axis.name, v)
            for v in values]


def expand_grid(task: TaskFile, axes: Sequence[Axis], target_key: str, default_target: int,
                extra_keys: Sequence[str] = ("metrics",)) -> list[Cell]:
    """The cells of ``task`` for a job kind with ``axes``, in file order, duplicates merged.

    Raises :class:`BenchConfigError` on a missing or empty axis, an unknown key, or two cells
    that would show the same labels with different parameters.
    """
    names = {a.name for a in axes} | {a.key for a in axes}
    misplaced = sorted(set(task.run) & (names | set(extra_keys)))
    if misplaced:
        raise BenchConfigError(f"{task.path}: {misplaced} are inside [run]; TOML puts keys after a "
                               "table header into that table: move grid lists above [run] or "
                               "under [grid]")
    unknown = sorted(set(task.grid) - {a.key for a in axes} - set(extra_keys))
    if unknown:
        raise BenchConfigError(f"{task.path}: unknown grid key(s) {unknown}; this job kind's axes "
                               f"are {[a.key for a in axes]}")
    top = {a.name: _entries(a, task.grid[a.key], "grid") for a in axes if a.key in task.grid}
    labels = {name: {e.label: e for e in entries} for name, entries in top.items()}

    blocks = task.blocks or [{}]
    cells: list[Cell] = []
    seen: dict[tuple[str, ...], Cell] = {}
    shown: dict[tuple[str, ...], tuple[str, ...]] = {}
    for bi, block in enumerate(blocks):
        where = f"{task.path}: [[cell]] #{bi + 1}" if task.blocks else f"{task.path}: grid"
        bad = sorted(set(block) - names - {target_key})
        if bad:
            raise BenchConfigError(f"{where}: unknown key(s) {bad}")
        lists = []
        for a in axes:
            if a.name in block and a.key in block:
                raise BenchConfigError(f"{where}: both '{a.name}' and '{a.key}'")
            if a.name in block:
                lists.append(_entries(a, [block[a.name]], where, labels.get(a.name)))
            elif a.key in block:
                lists.append(_entries(a, block[a.key], where, labels.get(a.name)))
            elif a.name in top:
                lists.append(top[a.name])
            else:
                raise BenchConfigError(f"{where}: no '{a.key}' given")
        target = block.get(target_key, default_target)
        if isinstance(target, bool) or not isinstance(target, int) or target < 1:
            raise BenchConfigError(f"{where}: '{target_key}' must be a positive integer")
        for combo in itertools.product(*lists):
            cell = Cell(tuple((a.name, e) for a, e in zip(axes, combo, strict=True)), target)
            key = tuple(e.digest for e in combo)
            if key in seen:
                if seen[key].target != target:
                    raise BenchConfigError(f"{where}: cell {cell.labels} appears twice with "
                                           f"different {target_key}")
                continue
            if cell.labels in shown:
                raise BenchConfigError(f"{where}: two different cells are labelled {cell.labels}; "
                                       "give one of them a distinct 'label'")
            seen[key] = cell
            shown[cell.labels] = key
            cells.append(cell)
    return cells
