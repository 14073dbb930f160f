"""Run a task file: resume, split across workers, write rows as they come, render the report.

Order of work: the plan is loaded and checked, its output folder is checked (not a file, not
under a file, creatable), the job kind validates names (of the whole grid) and resolves the
identity of each axis value of the cells this worker computes (those ``--only`` selects and where
``--shard`` gives it units: a prior's weights file that another cell needs may be missing); the
rows already in any file of the run are read; the job kind rehearses the cells that have work
left (restore: each solver up to its first network evaluation), so nothing is written before all
of this succeeds. Then this worker's units (index % workers == worker) that have no row
yet are done cell by cell in batches of ``batch_size``; each unit's row is appended and fsync'd
as soon as its batch returns. Finally the report of all rows of the run is rendered: it checks
the rows of the cells computed against the identities resolved, and takes those of the other cells
as they are (as ``--report-only`` does), resolving a cell only where its rows mix identities;
cells whose file is missing (:func:`~diffinv.bench.plan.missing_files`) show as not done. A run
that fails before its first row leaves no results file (nor a folder made for it) behind.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffinv.bench.errors import BenchConfigError, BenchRecordError
from diffinv.bench.jobs import RunContext, UnitResult
from diffinv.bench.machine import machine_info
from diffinv.bench.plan import (
    Plan,
    env_rank,
    load_plan,
    missing_files,
    override_device,
    parse_shard,
    run_device,
    select_cells,
    worker_of,
)
from diffinv.bench.records import RecordWriter, read_records, record_path, run_files
from diffinv.bench.report import Report, build_report, mixed_cells, write_report
from diffinv.bench.spec import Cell
from diffinv.checks import check_output_folder
from diffinv.errors import DiffinvError
from diffinv.seeding import image_seed

RECORD_VERSION = 1


@dataclass
class Outcome:
    """What a call did: rows written by this process, rows skipped as done, report paths."""

    plan: Plan
    worker: tuple[int, int]
    written: int
    skipped: int
    report: Report | None
    files: tuple[Path, ...]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def reproduce_command(task_path: Path) -> str:
    """``diffinv bench PATH`` with PATH relative to the working directory when inside it."""
    p = task_path.resolve()
    try:
        shown = p.relative_to(Path.cwd().resolve())
    except ValueError:
        shown = p
    return f"diffinv bench {shown.as_posix()}"


def read_all_rows(plan: Plan) -> tuple[list[dict[str, Any]], int, int]:
    """The run's own rows, then the rows of each run in ``plan.reuse`` that belong to one of this
    run's cells (the unit key then decides, row by row, whether it is this run's computation);
    returns (rows, number of files read, number of rows taken from other runs)."""
    files = run_files(plan.out_dir, plan.name)
    rows: list[dict[str, Any]] = []
    for p in files:
        rows.extend(read_records(p)[0])
    cell_keys = {plan.cell_key(c) for c in plan.cells}
    n_reused = 0
    for other in plan.reuse:
        theirs = run_files(plan.out_dir, other)
        files = files + theirs
        for p in theirs:
            mine = [r for r in read_records(p)[0] if r.get("cell_key") in cell_keys]
            rows.extend(mine)
            n_reused += len(mine)
    return rows, len(files), n_reused


def _as_result(r: Any) -> UnitResult:
    if isinstance(r, UnitResult):
        return r
    if isinstance(r, Mapping):
        return UnitResult(metrics=dict(r))
    raise DiffinvError(f"a job function returned {type(r).__name__}; expected UnitResult")


def _row(plan: Plan, ctx: RunContext, cell: Cell, index: int, res: UnitResult,
         resolved: Mapping[tuple[str, str], Mapping[str, Any]], meta: Mapping[str, Any]) -> dict:
    missing = [m for m in plan.metrics if m not in res.metrics]
    if missing:
        raise DiffinvError(f"job kind {plan.kind.name!r} returned no value for metric(s) "
                           f"{missing} (cell {'/'.join(cell.labels)}, index {index})")
    res_ident = plan.cell_identity(cell, resolved)
    cell_json = {a: {**e.describe(), "resolved": res_ident[a]} for a, e in cell}
    return {
        "v": RECORD_VERSION,
        "run": plan.name,
        "kind": plan.kind.name,
        "key": plan.unit_key(cell, index, res_ident),
        "cell_key": plan.cell_key(cell),
        "index": int(index),
        "seed": plan.seed,
        "unit_seed": image_seed(plan.seed, index),
        "identity": plan.identity,
        "cell": cell_json,
        "metrics": {k: float(v) for k, v in res.metrics.items()},
        "nfe": None if res.nfe is None else float(res.nfe),
        "seconds": None if res.seconds is None else float(res.seconds),
        "extra": dict(res.extra),
        "device": ctx.device,
        **meta,
    }


def resolve_all(plan: Plan, ctx: RunContext, cells: Sequence[Cell] | None = None
                ) -> dict[tuple[str, str], dict[str, Any]]:
    """(cell key, axis) -> the resolved identity of that cell's value on that axis, for each
    of ``cells`` (default: every cell of the plan)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in plan.cells if cells is None else cells:
        key = plan.cell_key(cell)
        for a, e in cell:
            ident = plan.kind.resolve(ctx, a, e, cell) if plan.kind.resolve else {}
            out[(key, a)] = dict(ident or {})
    return out


def run_benchmark(task_path: str | os.PathLike[str], *, shard: str | None = None,
                  only: Sequence[str] | None = None, report_only: bool = False, progress: bool = True,
                  env: Mapping[str, str] | None = None, command: str | None = None,
                  invocation: str | None = None, device: str | None = None,
                  batch_size: int | None = None, split: str = "images") -> Outcome:
    """Run (or resume) the task file, then write its report; see the module docstring.

    ``shard`` is ``"i/n"``; torchrun's RANK/WORLD_SIZE in ``env`` split further. ``only``
    (``["prior=fashion32", ...]``, see :func:`~diffinv.bench.plan.select_cells`) computes just
    the matching cells; the report still merges every row of the run. With
    ``report_only`` nothing is computed: the report is re-rendered from the rows on disk.
    ``command`` heads the report (default ``diffinv bench PATH``); ``invocation`` (default the
    same) is stored in each row written. ``device`` overrides the task file's [run] device
    (see :func:`~diffinv.bench.plan.override_device`); each row records the device it ran on.
    ``batch_size`` overrides the task file's (rows record their batch). ``split`` says how
    ``shard`` divides the work: ``"images"`` gives worker k of m the images i with i % m == k
    of every cell (batches of up to ``batch_size`` of them), ``"batches"`` cuts every cell into
    batches of ``batch_size`` consecutive images and gives worker k batches k, k + m, ... of the
    whole grid in order: whole batches, so m workers on one GPU each keep a full batch, and a
    division that does not depend on the rows already on disk (workers may start at any time).
    """
    if split not in ("images", "batches"):
        raise BenchConfigError(f"bad split {split!r}: expected 'images' or 'batches'")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size
                                   or batch_size < 1):
        raise BenchConfigError(f"bad batch size {batch_size!r}: expected an integer >= 1")
    shard_t = parse_shard(shard)
    rank_t = env_rank(env)
    plan = load_plan(task_path)
    check_output_folder(plan.out_dir, replace=False)  # a file, under a file, not creatable
    if not report_only:
        plan = override_device(plan, device)
    if batch_size is not None:
        plan = replace(plan, batch_size=int(batch_size))
    selected = select_cells(plan.cells, only)
    worker = worker_of(shard_t, rank_t)
    command = command or reproduce_command(plan.task.path)

    if report_only:
        rows, n_files, n_reused = read_all_rows(plan)
        if not rows:
            raise BenchRecordError(f"no rows of run {plan.name!r} in {plan.out_dir}; run "
                                   f"`{command}` first")
        rep = build_report(plan, rows, command=command, n_files=n_files, n_reused=n_reused,
                           missing=missing_files(plan.cells))
        return Outcome(plan, worker, 0, 0, rep, write_report(rep))

    device = run_device(plan.device, env)
    ctx = RunContext(name=plan.name, kind=plan.kind.name, seed=plan.seed, device=device,
                     options=dict(plan.options), metrics=list(plan.metrics), shard=worker)
    if plan.kind.validate is not None:
        plan.kind.validate(ctx, plan.cells)

    k, m = worker
    bs = plan.batch_size
    work: list[tuple[Cell, list[list[int]]]] = []  # this worker's units of each selected cell
    n_batches = 0  # split == "batches": the batches of the whole grid, numbered in order
    for cell in selected:
        if split == "images":  # one group per cell, batched after dropping the done units
            groups = [[i for i in range(cell.target) if i % m == k]]
        else:  # the grid's fixed batches k, k + m, ...
            starts = range(0, cell.target, bs)
            groups = [list(range(s, min(s + bs, cell.target)))
                      for j, s in enumerate(starts, n_batches) if j % m == k]
            n_batches += len(starts)
        if any(groups):
            work.append((cell, groups))
    # only the cells this worker computes: another cell's prior file may not exist (yet)
    resolved = resolve_all(plan, ctx, [cell for cell, _ in work])

    rows, _, _ = read_all_rows(plan)
    done = {r.get("key") for r in rows}
    todo: list[tuple[Cell, list[int]]] = []
    skipped = 0
    for cell, groups in work:
        ident = plan.cell_identity(cell, resolved)
        for mine in groups:
            left = [i for i in mine if plan.unit_key(cell, i, ident) not in done]
            skipped += len(mine) - len(left)
            todo += [(cell, left[s:s + bs]) for s in range(0, len(left), bs)]
    n_todo = sum(len(ix) for _, ix in todo)
    if todo and plan.kind.rehearse is not None:  # what would fail at its first unit fails now
        plan.kind.rehearse(ctx, list({id(c): c for c, _ in todo}.values()))
    path = record_path(plan.out_dir, plan.name, worker)
    print(f"diffinv bench {plan.name}: {len(selected)} of {len(plan.cells)} cell(s); worker {k}/{m}: "
          f"{skipped} done, {n_todo} to do -> {path}", file=sys.stderr)

    written = 0
    if todo:
        meta = {"worker": f"{k}/{m}", "command": invocation or command}
        from tqdm import tqdm

        with RecordWriter(path) as writer, tqdm(total=n_todo, desc=plan.name,
                                                unit=plan.kind.replicate,
                                                disable=not progress, file=sys.stderr) as bar:
            for cell, indices in todo:
                started = _now()
                t0 = time.perf_counter()
                results = list(plan.kind.run(ctx, cell, list(indices)))
                if len(results) != len(indices):
                    raise DiffinvError(f"job kind {plan.kind.name!r} returned {len(results)} "
                                       f"results for {len(indices)} units")
                stamp = {"started": started, "finished": _now(), "batch": len(indices),
                         "batch_seconds": time.perf_counter() - t0,
                         "machine": machine_info(device)}  # as the job left it (threads)
                batch_rows = [_row(plan, ctx, cell, i, _as_result(r), resolved, {**meta, **stamp})
                              for i, r in zip(indices, results, strict=True)]
                for row in batch_rows:
                    writer.write(row)
                    written += 1
                bar.update(len(indices))

    rows, n_files, n_reused = read_all_rows(plan)
    if not rows:
        return Outcome(plan, worker, written, skipped, None, ())
    missing = missing_files(plan.cells)
    # the cells not computed are reported from their rows as they are; where those mix
    # identities (weights retrained half-way), the current ones decide, as in a run of the cell
    others = [c for c in plan.cells
              if (plan.cell_key(c), c.axes[0]) not in resolved
              and not any(e.digest in missing for _, e in c)]
    resolved.update(resolve_all(plan, ctx, mixed_cells(plan, rows, others)))
    rep = build_report(plan, rows, command=command, resolved=resolved, n_files=n_files,
                       n_reused=n_reused, missing=missing)
    files = write_report(rep)
    print(f"diffinv bench {plan.name}: wrote {files[0]} and {files[1]}", file=sys.stderr)
    if rep.missing:
        print(f"diffinv bench {plan.name}: {len(rep.missing)} file(s) missing, their cells not "
              "done: " + ", ".join(path for _, _, path in rep.missing), file=sys.stderr)
    return Outcome(plan, worker, written, skipped, rep, files)
