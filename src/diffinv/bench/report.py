"""Tables from result rows: per cell, each metric's mean (or median) with a 95% interval and N.

Rows are matched to the cells of the current task file by cell key (so rows of cells since
removed from the file, or of indices beyond a cell's target, are left out and counted). Within a
cell, rows must agree on the resolved identity of the axis values (e.g. the prior's weights): a
run passes the identities it resolved (those of the cells it computed, and of any other cell whose
rows mix identities) and, in those cells, rows of other identities are left out; elsewhere, and
with ``--report-only``, which resolves nothing, a cell's rows are taken as they are, and a cell
whose rows mix identities is an error. A cell with fewer rows than its target is marked
incomplete: ``N = 37/50*``. A cell with an axis value whose file is missing (a prior's ``path``
that does not exist: :func:`~diffinv.bench.plan.missing_files`) is shown as not done (``0/50*``)
and the header names the missing files, in one line.

The Markdown table and the CSV (one row per cell and column, ``#`` comment lines first) are
headed by the command, the machines the rows came from, the date and the resolved identities
(the SHA-256 of each prior's weights).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffinv.bench.errors import BenchRecordError
from diffinv.bench.machine import describe_machine
from diffinv.bench.plan import Plan
from diffinv.bench.spec import Cell, canonical_json
from diffinv.bench.stats import Summary, summarize

Resolved = Mapping[tuple[str, str], Mapping[str, Any]]  # (cell key, axis) -> identity


@dataclass
class CellReport:
    cell: Cell
    n: int
    target: int
    columns: dict[str, Summary]

    @property
    def complete(self) -> bool:
        return self.n >= self.target


@dataclass
class Report:
    plan: Plan
    command: str
    cells: list[CellReport]
    columns: list[str]
    machines: list[str]
    identities: list[tuple[str, str, str]]  # (axis, label, "key value ..." [+ " (in: cells)"])
    first: str | None
    last: str | None
    n_rows: int
    n_files: int
    n_unused: int
    n_reused: int = 0
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (axis, label, path)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"))


def _row_resolved(row: Mapping[str, Any]) -> dict[str, Any]:
    return {a: v.get("resolved", {}) for a, v in row.get("cell", {}).items()}


def _fmt_identity(ident: Mapping[str, Any]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(ident.items()))


def _given_settings(described: Mapping[str, Any]) -> str:
    """The settings a task file gives an axis value beside its preset (a DAPS ``budget``, say):
    the resolved identity holds the preset's parameters only, and where both set a value the
    task file's is the one the solver gets."""
    given = {k: v for k, v in (described.get("params") or {}).items() if k != "preset"}
    return f" (task file: {_fmt_identity(given)})" if given else ""


def _varying_axes(plan: Plan) -> set[str]:
    """The axes whose label differs between the plan's cells."""
    labels: dict[str, set[str]] = {}
    for cell in plan.cells:
        for a, e in cell:
            labels.setdefault(a, set()).add(e.label)
    return {a for a, ls in labels.items() if len(ls) > 1}


def _identity_lines(plan: Plan, identities: Mapping[tuple[str, str, str], list[str]]
                    ) -> list[tuple[str, str, str]]:
    """Identities in axis order; where one axis value has several (a preset's per-task
    parameters), each names the cells it was used in."""
    order: dict[str, int] = {}
    for cell in plan.cells:
        for a, _ in cell:
            order.setdefault(a, len(order))
    count: dict[tuple[str, str], int] = {}
    for a, label, _ in identities:
        count[(a, label)] = count.get((a, label), 0) + 1
    out = []
    for (a, label, ident), where in sorted(identities.items(), key=lambda kv: order.get(kv[0][0], 99)):
        if count[(a, label)] > 1 and where:
            ident += f" (in: {', '.join(where)})"
        out.append((a, label, ident))
    return out


def _is_resolved(plan: Plan, cell: Cell, resolved: Resolved | None) -> bool:
    key = plan.cell_key(cell)
    return resolved is not None and all((key, a) in resolved for a, _ in cell)


def _cell_rows(plan: Plan, rows: Sequence[Mapping[str, Any]]
               ) -> dict[str, list[Mapping[str, Any]]]:
    by_cell: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_cell.setdefault(str(r.get("cell_key")), []).append(r)
    return by_cell


def _in_cell(cell: Cell, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if isinstance(r.get("index"), int) and 0 <= r["index"] < cell.target]


def mixed_cells(plan: Plan, rows: Sequence[Mapping[str, Any]], cells: Sequence[Cell]
                ) -> list[Cell]:
    """The cells of ``cells`` whose rows were computed with different resolved identities (the
    cells :func:`build_report` can only report once their current identities are resolved)."""
    by_cell = _cell_rows(plan, rows)
    return [c for c in cells
            if len({canonical_json(_row_resolved(r))
                    for r in _in_cell(c, by_cell.get(plan.cell_key(c), []))}) > 1]


def build_report(plan: Plan, rows: Sequence[Mapping[str, Any]], *, command: str,
                 resolved: Resolved | None = None, n_files: int = 0, n_reused: int = 0,
                 missing: Mapping[str, tuple[str, str, str]] | None = None) -> Report:
    """Aggregate ``rows`` over the cells of ``plan``. ``resolved`` holds the identities of the
    cells a run resolved (not necessarily all); ``missing`` is
    :func:`~diffinv.bench.plan.missing_files` of the plan's cells."""
    by_cell = _cell_rows(plan, rows)
    missing = dict(missing or {})

    has_nfe = any(r.get("nfe") is not None for r in rows)
    has_sec = any(r.get("seconds") is not None for r in rows)
    columns = list(plan.metrics) + (["nfe"] if has_nfe else []) + (["seconds"] if has_sec else [])

    used = 0
    machines: dict[str, None] = {}
    identities: dict[tuple[str, str, str], list[str]] = {}  # -> labels of the cells using it
    varying = _varying_axes(plan)
    stamps: list[str] = []
    reports = []
    for cell in plan.cells:
        cand = _in_cell(cell, by_cell.get(plan.cell_key(cell), []))
        if resolved is not None and _is_resolved(plan, cell, resolved):
            want = plan.cell_identity(cell, resolved)
            cand = [r for r in cand if _row_resolved(r) == want]
        elif any(e.digest in missing for _, e in cell):  # not computable: not done
            cand = []
        else:
            groups = {canonical_json(_row_resolved(r)) for r in cand}
            if len(groups) > 1:
                raise BenchRecordError(
                    f"cell {'/'.join(cell.labels)} has rows computed with different resolved "
                    f"identities ({'; '.join(sorted(groups))}): run `diffinv bench "
                    f"{plan.task.path}` without --report-only to keep the current ones, or "
                    "remove the stale rows")
        per_index: dict[int, Mapping[str, Any]] = {}
        for r in cand:
            per_index.setdefault(r["index"], r)
        chosen = [per_index[i] for i in sorted(per_index)]
        used += len(chosen)
        for r in chosen:
            machines.setdefault(describe_machine(r.get("machine", {})), None)
            for a, ident in _row_resolved(r).items():
                if ident:
                    text = _fmt_identity(ident) + _given_settings(cell[a].describe())
                    where = identities.setdefault((a, cell[a].label, text), [])
                    here = "/".join(e.label for b, e in cell if b != a and b in varying)
                    if here and here not in where:
                        where.append(here)
            stamps.extend(s for s in (r.get("started"), r.get("finished")) if s)
        cols = {}
        for c in columns:
            if c in ("nfe", "seconds"):
                xs = [float(r[c]) for r in chosen if r.get(c) is not None]
            else:
                xs = [float(r["metrics"][c]) for r in chosen if c in r.get("metrics", {})]
            cols[c] = summarize(xs, plan.kind.statistic)
        reports.append(CellReport(cell, len(chosen), cell.target, cols))
    return Report(plan=plan, command=command, cells=reports, columns=columns,
                  machines=list(machines), identities=_identity_lines(plan, identities),
                  first=min(stamps) if stamps else None, last=max(stamps) if stamps else None,
                  n_rows=len(rows), n_files=n_files, n_unused=len(rows) - used,
                  n_reused=n_reused, missing=list(missing.values()))


def _decimals(s: Summary) -> int:
    """Decimals that show the interval to two significant digits (4 significant if none)."""
    width = (s.high - s.low) / 2 if math.isfinite(s.low) and math.isfinite(s.high) else math.nan
    if math.isfinite(width) and width > 0:
        return max(0, min(8, 1 - math.floor(math.log10(width))))
    if math.isfinite(s.center) and s.center == round(s.center):
        return 0
    if math.isfinite(s.center):
        return max(0, min(8, 3 - math.floor(math.log10(abs(s.center)))))
    return 2


def format_summary(s: Summary) -> str:
    """``24.31 ± 0.52`` (mean), ``1.23 [1.20, 1.31]`` (median), ``1000`` if constant, ``–``."""
    if s.n == 0:
        return "–"
    d = _decimals(s)
    center = f"{s.center:.{d}f}"
    if not (math.isfinite(s.low) and math.isfinite(s.high)):
        return center if math.isfinite(s.center) else str(s.center)
    if s.low == s.high == s.center:
        return center
    if s.statistic == "mean":
        return f"{center} ± {(s.high - s.low) / 2:.{d}f}"
    return f"{center} [{s.low:.{d}f}, {s.high:.{d}f}]"


def format_n(c: CellReport) -> str:
    return str(c.n) if c.complete else f"{c.n}/{c.target}*"


def _column_title(plan: Plan, c: str) -> str:
    if c == "nfe":
        return "NFE"
    if c == "seconds":
        return f"s/{plan.kind.replicate}"
    return c


def _minute(stamp: str | None) -> str:
    """``2025-01-02T03:04:05.678+00:00`` -> ``2025-01-02 03:04``."""
    return (stamp or "")[:16].replace("T", " ")


def header_lines(rep: Report) -> list[str]:
    """The lines every table starts with (without Markdown markup)."""
    plan = rep.plan
    lines = [f"Command: {rep.command}"]
    lines += [f"Machine: {m}" for m in rep.machines] or ["Machine: (no rows yet)"]
    span = f" (rows from {_minute(rep.first)} to {_minute(rep.last)})" if rep.first else ""
    lines.append(f"Date: {rep.created}{span}")
    for axis, label, ident in rep.identities:
        lines.append(f"{axis.capitalize()} {label}: {ident}")
    if rep.missing:
        lines.append("Missing files (their cells are not done, N = 0, until they exist): "
                     + "; ".join(f"{axis} {label} ({path})" for axis, label, path in rep.missing))
    opts = {"seed": plan.seed, **plan.identity}
    lines.append(f"Run: kind {plan.kind.name}, " + ", ".join(f"{k} {v}" for k, v in opts.items()))
    stat = ("mean ± half-width of the 95% Student-t interval" if plan.kind.statistic == "mean"
            else "median [95% order-statistic interval]")
    lines.append(f"Cells: {stat} over {plan.kind.replicate}s; N = {plan.kind.replicate}s done "
                 "(n/target* marks an incomplete cell)")
    reused = (f", {rep.n_reused} of them from run(s) {', '.join(plan.reuse)} (same unit keys; "
              "metrics those runs did not record are blank)" if rep.n_reused else "")
    lines.append(f"Rows: {rep.n_rows} in {rep.n_files} file(s){reused}"
                 + (f", {rep.n_unused} not in this table" if rep.n_unused else ""))
    return lines


def render_markdown(rep: Report) -> str:
    plan = rep.plan
    out = [f"# {plan.title}", ""]
    out += [f"- {line}" for line in header_lines(rep)]
    if plan.notes.strip():
        out += ["", plan.notes.strip()]
    axes = [a.name for a in plan.kind.axes]
    head = axes + [_column_title(plan, c) for c in rep.columns] + ["N"]
    out += ["", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(axes)
                                                             + ["--:"] * (len(head) - len(axes)))
            + "|"]
    for c in rep.cells:
        vals = list(c.cell.labels) + [format_summary(c.columns[k]) for k in rep.columns]
        out.append("| " + " | ".join(vals + [format_n(c)]) + " |")
    if any(not c.complete for c in rep.cells):
        out += ["", "\\* incomplete: fewer rows than the cell's target N."]
    return "\n".join(out) + "\n"


def render_csv(rep: Report) -> str:
    """One row per (cell, column): axis labels, column, statistic, value, interval, N, target."""
    plan = rep.plan
    buf = io.StringIO()
    for line in header_lines(rep):
        buf.write(f"# {line}\n")
    w = csv.writer(buf, lineterminator="\n")
    axes = [a.name for a in plan.kind.axes]
    w.writerow(axes + ["column", "statistic", "value", "ci_low", "ci_high", "n", "target",
                       "complete"])
    for c in rep.cells:
        for k in rep.columns:
            s = c.columns[k]
            w.writerow(list(c.cell.labels) + [k, s.statistic, repr(s.center), repr(s.low),
                                              repr(s.high), s.n, c.target, int(c.complete)])
    return buf.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _without_date(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.lstrip("-# ").startswith("Date: ")]


def _write_unless_only_date_differs(path: Path, text: str) -> None:
    """Keep an existing file whose only difference from ``text`` is its ``Date:`` line, so that
    re-running a finished table (nothing to do) leaves its report untouched."""
    try:
        if _without_date(path.read_text(encoding="utf-8")) == _without_date(text):
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    _atomic_write(path, text)


def write_report(rep: Report) -> tuple[Path, Path]:
    """Write ``NAME.md`` and ``NAME.csv`` next to the rows (atomically: ranks may race). A file
    that would change only in its ``Date:`` line is left as it is."""
    d, name = rep.plan.out_dir, rep.plan.name
    md, cs = d / f"{name}.md", d / f"{name}.csv"
    _write_unless_only_date_differs(md, render_markdown(rep))
    _write_unless_only_date_differs(cs, render_csv(rep))
    return md, cs
