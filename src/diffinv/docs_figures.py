"""The figures of the hand-written result pages (``docs/papers/``), read from the committed
benchmark files when the site is built.

A page quotes a figure through a placeholder, ``{{ KIND ARGS }}``, that ``docs/hooks.py``
(``on_page_markdown``) replaces by :func:`expand_figures`; nothing here needs mkdocs. ARGS are
shell-like words: files first, then ``key=value`` pairs (quote values with spaces). The kinds:

``{{ cell NAME method=M task=T [column=psnr] [prior=P] }}``
    A cell of ``benchmarks/NAME.csv`` (written by ``diffinv bench``): ``24.2 ± 1.8`` as the
    table prints it. Any other key filters on the CSV column of that name; ``over=KEY=VALUE``
    gives the ratio of each value to that of the row that differs only in KEY.
``{{ row NAME method=M tasks="T1,T2,-,T4" [column=psnr] }}``
    Markdown table cells: the ``cell`` of each task, joined by `` | `` (``-``: an empty cell).
``{{ paired FILE... a=A b=B [task=T] [metric=psnr] [axis=method] }}``
    The paired difference B minus A over the images both rows have, from the run's JSONL rows
    (files or globs under ``benchmarks/``), with the statistics and format of
    ``benchmarks/tools/paired_difference.py`` (:mod:`diffinv.bench.paired`): ``-4.0305 ±
    2.0598``. ``a=best`` takes each cell's best other row, as the tool's ``--a best`` (``exclude=``
    keeps a label out). Any other key selects the cell by an axis's label.
``{{ table FILE.md row="C1 | C2" column=HEADER [section=HEADING] }}``
    A cell of a Markdown table that a tool in ``benchmarks/tools/`` wrote (where there is no CSV),
    verbatim; ``row`` matches the leading cells of a row (cells separated by `` | ``, with
    spaces; ``A|B`` without spaces is either).
``{{ fid NAME_fid method=M task=T [value=fid] }}``
    A cell of ``benchmarks/NAME_fid.json`` (``diffinv bench ... --fid N``): ``fid``, ``psnr``,
    ``seconds_per_image``; ``value=floor`` (no method or task) is the train-split floor.
``{{ card PATH... key=a.b }}``
    A value of a committed model card (JSON; paths or globs from the repository root).
``{{ paper ID }}``
    A figure the papers (or the issues' aims) report, not ours: the row ``ID`` of
    ``docs/paper_figures.csv``, with its source.

Selectors are exact, except that ``*`` matches anything and ``A|B`` either. Every kind but
``paper`` takes the format keys: ``digits=N`` (decimals, negative: to tens, hundreds; default: as
the source file prints it); ``show=both`` (default: the value with its ± half-width), ``mean``
(the value alone), ``hw`` (the half-width), ``interval`` (``+3.27 [+1.86, +4.69]``), ``maxabs``
(paired: the largest absolute difference, over every cell selected),
``range`` (``lo-hi`` over every row the selectors match), ``min`` or ``max`` (of those);
``sign=+`` / ``sign=none`` (paired differences are signed by default); ``abs=yes``;
``scale=`` / ``divide=`` (a factor: a fraction as a percentage, seconds as minutes);
``group=yes`` (``1,707``); ``item=N`` (table: the N-th number of the cell).

The top-level ``README.md`` (shown on GitHub and PyPI, so plain Markdown with real numbers) is
written from ``docs/README.template.md`` by the same expansion: ``python -m diffinv.docs_figures
--readme`` (``make readme``) rewrites it, ``--check`` exits 1 with a diff when it is stale
(:func:`render_readme`, :func:`write_readme`, :func:`readme_diff`).

A placeholder that names a missing file raises :class:`~diffinv.docs_bench.MissingBenchmarkError`,
one that names a missing method, task, column or cell :class:`FigureError`; both name the
placeholder, the page and the command that writes the file.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from diffinv.docs_bench import BenchmarkFormatError, MissingBenchmarkError, benchmarks_dir, read_bench_csv
from diffinv.docs_bench import csv_float as _float

#: a placeholder: ``{{ KIND ARGS }}`` (ARGS may wrap over lines)
PLACEHOLDER = re.compile(r"\{\{\s*([a-z]+)\b(.*?)\}\}", re.DOTALL)
KINDS = ("cell", "row", "paired", "table", "fid", "card", "paper")
PAPER_FIGURES = "docs/paper_figures.csv"
#: the top-level README and the template it is written from (paths from the repository root)
README = "README.md"
README_TEMPLATE = "docs/README.template.md"
_PAPER_COLUMNS = ("id", "paper", "table", "row", "column", "value", "source")
_FORMAT_KEYS = {"digits", "show", "sign", "abs", "scale", "divide", "group", "item"}
_SHOWS = ("both", "mean", "hw", "interval", "range", "min", "max", "maxabs")


class FigureError(BenchmarkFormatError):
    """A placeholder that cannot be expanded: its file lacks what it names, or it is malformed."""


@dataclass(frozen=True)
class Figure:
    """One value a placeholder selected: its centre, interval half-width and extreme, with the
    decimals its source prints (``text``: a Markdown table cell, verbatim)."""

    center: float
    half_width: float = math.nan
    max_abs: float = math.nan
    digits: int | None = None
    significant: int | None = None
    text: str | None = None


@dataclass(frozen=True)
class _Context:
    page: str
    placeholder: str
    bench_dir: Path
    root: Path
    paper_figures: Path

    def error(self, message: str) -> FigureError:
        return FigureError(f"{self.page}: {self.placeholder}: {message}")

    def missing(self, path: Path, command: str) -> MissingBenchmarkError:
        rel = _rel(path, self.root)
        return MissingBenchmarkError(
            f"{self.page}: {self.placeholder}: {rel} does not exist. It is written by `{command}` "
            f"and committed with the repository: restore it (`git checkout -- {rel}`) or rerun "
            "that command")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------- reading
_CACHE: dict[tuple[str, str, int, int], object] = {}


def _cached(kind: str, path: Path, read: Callable[[Path], object]) -> object:
    st = path.stat()
    key = (kind, str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE[key] = read(path)
    return _CACHE[key]


def _csv_rows(path: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """A bench CSV's rows and its ``# Key: value`` header (first value of each key)."""
    _, rows, header = read_bench_csv(path)
    return rows, {k: v[0] for k, v in header.items()}


def _jsonl_rows(path: Path) -> list[dict]:
    from diffinv.bench.records import read_records

    return read_records(path)[0]


def _md_tables(path: Path) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(heading above it, header cells, rows of cells)`` of every table of a Markdown file."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    heading = ""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if (line.startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1])):
            header = _md_cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_md_cells(lines[i]))
                i += 1
            out.append((heading, header, rows))
            continue
        i += 1
    return out


def _md_cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _made_by(path: Path) -> str | None:
    """The command a committed Markdown file names in its header (``Made by:`` / ``Command:``)."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines()[:12]:
        m = re.search(r"(?:Made by|Command):?\s*`([^`]+)`", line) or re.match(
            r"- Command: (.+)$", line)
        if m:
            return m.group(1).strip()
    return None


def _command_for(ctx: _Context, path: Path) -> str:
    """The command that writes ``path``: the one its own header (or its table's) names, the
    ``diffinv bench`` task of its name, or the tool in ``benchmarks/tools/`` that names it."""
    name = path.name
    stem = re.sub(r"(\.part[^.]*)?\.(csv|jsonl|json|md)$", "", name.replace("*", ""))
    for own in (path, path.with_suffix(".md")):
        made = _made_by(own)
        if made:
            return made
    fid = re.fullmatch(r"(.+)_fid", stem)
    task = ctx.bench_dir / "tasks" / f"{(fid.group(1) if fid else stem)}.toml"
    if task.is_file():
        return (f"diffinv bench benchmarks/tasks/{task.name}" + (" --fid N" if fid else "")
                + ("" if path.suffix in (".jsonl", ".json") else " --report-only"))
    tools = ctx.bench_dir / "tools"
    for tool in sorted(tools.glob("*.py")) if tools.is_dir() else []:
        if name in tool.read_text(encoding="utf-8") or stem in tool.read_text(encoding="utf-8"):
            return f"python benchmarks/tools/{tool.name} (see its docstring)"
    return "the command in the git log of that file"


# ------------------------------------------------------------------------------- selecting
def _pattern(value: str) -> re.Pattern[str]:
    """A selector: exact, except that ``*`` matches anything and ``A|B`` matches either."""
    return re.compile("|".join("".join(".*" if part == "*" else re.escape(part)
                                       for part in re.split(r"(\*)", alt))
                               for alt in value.split("|")))


def _matches(value: str, wanted: str) -> bool:
    return _pattern(wanted).fullmatch(value) is not None


def _known(values: Iterable[str]) -> str:
    vals = sorted(set(values))
    shown = ", ".join(repr(v) for v in vals[:30])
    return shown + (f", ... ({len(vals)} in all)" if len(vals) > 30 else "")


# ---------------------------------------------------------------------------- the kinds
def _cell(ctx: _Context, files: list[str], opts: dict[str, str]) -> list[Figure]:
    from diffinv.bench.report import _decimals
    from diffinv.bench.stats import Summary

    name = _one_file(ctx, files).removesuffix(".csv")
    path = ctx.bench_dir / f"{name}.csv"
    if not path.is_file():
        raise ctx.missing(path, _command_for(ctx, path))
    rows, header = _cached("csv", path, _csv_rows)  # type: ignore[misc]
    command = header.get("Command", f"diffinv bench benchmarks/tasks/{name}.toml")
    filters = {k: v for k, v in opts.items()
               if k not in _FORMAT_KEYS and k not in ("column", "over")}
    filters["column"] = opts.get("column", "psnr")
    have = rows
    for key, wanted in filters.items():  # narrowed key by key: the error names what is there
        if rows and key not in rows[0]:
            raise ctx.error(f"benchmarks/{name}.csv has no column {key!r} (its columns: "
                            f"{', '.join(rows[0])}); it is written by `{command}`")
        narrowed = [r for r in have if _matches(r[key], wanted)]
        if not narrowed:
            raise ctx.error(f"benchmarks/{name}.csv has no {key} {wanted!r} (its {key}s: "
                            f"{_known(r[key] for r in have)}); it is written by `{command}`")
        have = narrowed
    if "over" in opts:  # the ratio to the row that differs in one key: over="prior=fp32"
        key, sep, value = opts["over"].partition("=")
        if not sep or (rows and key not in rows[0]):
            raise ctx.error(f"over={opts['over']!r}: KEY=VALUE with KEY a column of the CSV")
        ratios = []
        for r in have:
            base = [b for b in rows if b[key] == value and all(
                b[k] == r[k] for k in ("method", "task", "prior", "column") if k in r and k != key)]
            if len(base) != 1:
                raise ctx.error(f"benchmarks/{name}.csv has {len(base)} rows with {key} {value!r} "
                                f"beside {r['method']!r} on {r['task']!r} (want 1)")
            ratios.append(Figure(_float(r["value"]) / _float(base[0]["value"]), digits=2))
        return ratios
    out = []
    for r in have:
        n = _float(r["n"])
        s = Summary(r["statistic"], _float(r["value"]), _float(r["ci_low"]), _float(r["ci_high"]),
                    int(n) if math.isfinite(n) else 0)
        hw = ((s.high - s.low) / 2 if math.isfinite(s.low) and math.isfinite(s.high)
              and not s.low == s.high == s.center else math.nan)
        out.append(Figure(s.center, hw, digits=_decimals(s)))
    return out


def _one_file(ctx: _Context, files: list[str]) -> str:
    if len(files) != 1:
        raise ctx.error(f"names {len(files)} files; this kind reads one")
    return files[0]


def _paired(ctx: _Context, files: list[str], opts: dict[str, str]) -> list[Figure]:
    from diffinv.bench.paired import axis_label, axis_parts, latest_rows, paired, paired_with_best
    from diffinv.bench.stats import mean_interval

    if not files:
        raise ctx.error("names no JSONL file (e.g. `blind_linear.part*.jsonl`)")
    paths: list[Path] = []
    for pattern in files:
        found = sorted(ctx.bench_dir.glob(pattern))
        if not found:
            path = ctx.bench_dir / pattern
            raise ctx.missing(path, _command_for(ctx, path))
        paths += [p for p in found if p not in paths]
    rows = latest_rows([r for p in paths for r in _cached("jsonl", p, _jsonl_rows)])  # type: ignore[attr-defined]
    written = re.search(r"diffinv bench \S+\.toml", str(rows[0].get("command", ""))) if rows else None
    command = written.group(0) if written else _command_for(ctx, paths[0])
    axis = opts.get("axis", "method")
    metric = opts.get("metric", "psnr")
    for key in ("a", "b"):
        if key not in opts:
            raise ctx.error(f"needs {key}= (the paired difference is b minus a)")
    labels = {axis_label(r, axis) for r in rows if r.get("cell")} - {None}
    if not labels:
        raise ctx.error(f"the rows have no axis {axis!r}")
    for key in ("a", "b"):
        if not (key == "a" and opts[key] == "best") and opts[key] not in labels:
            raise ctx.error(f"the rows have no {axis} {opts[key]!r} ({axis}s: {_known(labels)}); "
                            f"they are written by `{command}`")
    if opts["a"] == "best":
        exclude = [e for e in opts.get("exclude", "").split("|") if e]  # A|B: both
        diffs, _ = paired_with_best(rows, axis, opts["b"], opts.get("best-by", "psnr"), exclude)
    else:
        diffs = paired(rows, axis, opts["a"], opts["b"])
    reserved = _FORMAT_KEYS | {"a", "b", "axis", "metric", "exclude", "best-by"}
    selectors = {k: v for k, v in opts.items() if k not in reserved}
    axes = {k for r in rows for k in r.get("cell", {})} - set(axis_parts(axis))
    for key in selectors:
        if key not in axes:
            raise ctx.error(f"the rows have no axis {key!r} (axes: {', '.join(sorted(axes))})")
    out = []
    for cell, by_metric in sorted(diffs.items()):
        got = dict(cell)
        if all(_matches(got.get(k, ""), v) for k, v in selectors.items()):
            if metric not in by_metric:
                raise ctx.error(f"no paired values of {metric!r} (metrics: "
                                f"{', '.join(sorted(by_metric))})")
            v = by_metric[metric]
            st = mean_interval(list(v))
            hw = (st.high - st.low) / 2 if len(v) > 1 else math.nan
            out.append(Figure(st.center, hw, max(abs(x) for x in v), digits=4))
    if not out:
        cells = [", ".join(f"{k}={lab}" for k, lab in cell) for cell in diffs]
        raise ctx.error(f"no image is present under both {opts['a']!r} and {opts['b']!r} in a "
                        f"cell with {selectors} (cells both have: {_known(cells) or 'none'}); "
                        f"the rows are written by `{command}`")
    return out


def _number(text: str) -> float:
    """The leading number of a table cell: ``2,528x`` -> 2528, ``69%`` -> 69, ``+0.07 [...]``."""
    m = re.match(r"\s*([+-]?[\d,]*\.?\d+(?:e[+-]?\d+)?)", text)
    return float(m.group(1).replace(",", "")) if m else math.nan


def _table(ctx: _Context, files: list[str], opts: dict[str, str]) -> list[Figure]:
    name = _one_file(ctx, files)
    path = ctx.bench_dir / (name if name.endswith(".md") else f"{name}.md")
    if not path.is_file():
        raise ctx.missing(path, _command_for(ctx, path))
    command = _command_for(ctx, path)
    for key in ("row", "column"):
        if key not in opts:
            raise ctx.error(f"needs {key}=")
    want_row = [c.strip() for c in re.split(r"\s+\|\s+", opts["row"].strip())]
    tables = [t for t in _cached("md", path, _md_tables)  # type: ignore[attr-defined]
              if _matches(t[0], opts.get("section", "*"))]
    with_column = [t for t in tables if opts["column"] in t[1]]
    if not with_column:
        raise ctx.error(f"benchmarks/{path.name} has no table column {opts['column']!r} (columns: "
                        f"{_known(c for t in tables for c in t[1])}); it is written by `{command}`")
    out = []
    for _, header, rows in with_column:
        col = header.index(opts["column"])
        for cells in rows:
            lead = cells[:len(want_row)]
            if len(lead) == len(want_row) and all(
                    _matches(c, w) for c, w in zip(lead, want_row, strict=True)):
                text = cells[col] if col < len(cells) else ""
                if "item" in opts:  # the N-th number of the cell: "3 (2000) 2.42, ..." item=3
                    numbers = re.findall(r"[+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?", text)
                    k = int(opts["item"])
                    if not 1 <= k <= len(numbers):
                        raise ctx.error(f"item={k}: the cell {text!r} has {len(numbers)} numbers")
                    text = numbers[k - 1]
                parts = text.split(" ± ")
                hw = _number(parts[1]) if len(parts) > 1 else math.nan
                head = parts[0].split(" [")[0]
                decimals = re.search(r"\.(\d+)$", head.rstrip("%x"))
                out.append(Figure(_number(text), hw, text=text,
                                  digits=len(decimals.group(1)) if decimals else 0))
    if not out:
        raise ctx.error(f"benchmarks/{path.name} has no row {opts['row']!r} under "
                        f"{opts['column']!r} (rows: "
                        f"{_known(' | '.join(r[:len(want_row)]) for t in with_column for r in t[2])})"
                        f"; it is written by `{command}`")
    return out


def _fid(ctx: _Context, files: list[str], opts: dict[str, str]) -> list[Figure]:
    name = _one_file(ctx, files).removesuffix(".json")
    path = ctx.bench_dir / f"{name}.json"
    if not path.is_file():
        raise ctx.missing(path, _command_for(ctx, path))
    data = _cached("json", path, lambda p: json.loads(p.read_text(encoding="utf-8")))
    command = str(data.get("command", _command_for(ctx, path)))  # type: ignore[attr-defined]
    value = opts.get("value", "fid")
    if value == "floor":
        return [Figure(float(data["floor"]), digits=2)]  # type: ignore[index]
    selectors = [opts.get(k, "*") for k in ("method", "task", "prior")]
    cells = data["cells"]  # type: ignore[index]
    out = []
    for c in cells:
        if all(_matches(lab, w) for lab, w in zip(c["labels"], selectors, strict=False)):
            if c.get(value) is None:
                raise ctx.error(f"benchmarks/{path.name}: the cell {c['labels']} has no "
                                f"{value!r} (keys: {', '.join(c)}); it is written by `{command}`")
            sig = 3 if value == "seconds_per_image" else None
            out.append(Figure(float(c[value]), digits=None if sig else 2, significant=sig))
    if not out:
        raise ctx.error(f"benchmarks/{path.name} has no cell {selectors} (cells: "
                        f"{_known(' | '.join(c['labels']) for c in cells)}); it is written by "
                        f"`{command}`")
    return out


def _card(ctx: _Context, files: list[str], opts: dict[str, str]) -> list[Figure]:
    if "key" not in opts:
        raise ctx.error("needs key= (a dotted path into the card)")
    paths: list[Path] = []
    for pattern in files:  # paths (or globs) from the repository root
        found = sorted(ctx.root.glob(pattern))
        if not found:
            raise ctx.missing(ctx.root / pattern,
                              "the training command that wrote the model card (diffinv train-*)")
        paths += found
    if not paths:
        raise ctx.error("names no model card")
    out = []
    for path in paths:
        node: object = _cached("json", path, lambda p: json.loads(p.read_text(encoding="utf-8")))
        for part in opts["key"].split("."):
            if not isinstance(node, dict) or part not in node:
                have = ", ".join(node) if isinstance(node, dict) else type(node).__name__
                raise ctx.error(f"{_rel(path, ctx.root)} has no {opts['key']!r} (at {part!r}: "
                                f"{have})")
            node = node[part]
        if not isinstance(node, (int, float)):
            raise ctx.error(f"{_rel(path, ctx.root)}: {opts['key']!r} is not a number")
        out.append(Figure(float(node), significant=4))
    return out


def _paper(ctx: _Context, files: list[str], opts: dict[str, str]) -> str:
    ident = _one_file(ctx, files)
    path = ctx.paper_figures
    if not path.is_file():
        raise ctx.missing(path, "hand: it lists the figures the papers report, with their sources")
    rows = _cached("paper", path, lambda p: list(csv.DictReader(
        p.read_text(encoding="utf-8").splitlines())))
    lacking = [c for c in _PAPER_COLUMNS if rows and c not in rows[0]]  # type: ignore[index]
    if lacking:
        raise ctx.error(f"{_rel(path, ctx.root)} has no column {', '.join(lacking)}")
    found = [r for r in rows if r["id"] == ident]  # type: ignore[attr-defined]
    if len(found) != 1:
        raise ctx.error(f"{_rel(path, ctx.root)} has {len(found)} rows with id {ident!r} (want 1; "
                        f"ids: {_known(r['id'] for r in rows)})")  # type: ignore[attr-defined]
    return found[0]["value"]


def _row(ctx: _Context, files: list[str], opts: dict[str, str]) -> str:
    """Table cells: the ``cell`` of each task of ``tasks=`` (comma-separated; ``-``: an empty
    cell), joined by `` | ``."""
    if "tasks" not in opts:
        raise ctx.error("needs tasks= (comma-separated; - for an empty cell)")
    out = []
    for task in (t.strip() for t in opts["tasks"].split(",")):
        if task == "-":
            out.append("")
            continue
        one = {k: v for k, v in opts.items() if k != "tasks"} | {"task": task}
        try:
            out.append(format_figures(_cell(ctx, files, one), one))
        except ValueError as e:
            raise ctx.error(f"task {task!r}: {e}") from None
    return " | ".join(out)


_KINDS: dict[str, Callable[[_Context, list[str], dict[str, str]], list[Figure]]] = {
    "cell": _cell, "paired": _paired, "table": _table, "fid": _fid, "card": _card}


# ------------------------------------------------------------------------------ formatting
def _number_text(x: float, f: Figure, digits: int | None, signed: bool, group: bool = False
                 ) -> str:
    sign = "+" if signed else ""
    comma = "," if group else ""
    if digits is not None and digits < 0:  # to tens, hundreds, ...
        return f"{round(x, digits):{sign}{comma}.0f}"
    if digits is not None:
        return f"{x:{sign}{comma}.{digits}f}"
    if f.digits is not None:
        return f"{x:{sign}{comma}.{f.digits}f}"
    return f"{x:{sign}.{f.significant or 4}g}"


@dataclass(frozen=True)
class _Format:
    digits: int | None
    signed: bool
    use_abs: bool
    factor: float
    group: bool
    explicit_sign: bool

    @property
    def verbatim(self) -> bool:
        """Print a Markdown table's cell as the file has it."""
        return (self.digits is None and self.factor == 1 and not self.use_abs and not self.group
                and not self.explicit_sign)

    def number(self, x: float, f: Figure, signed: bool | None = None) -> str:
        return _number_text(x, f, self.digits, self.signed if signed is None else signed,
                            self.group)

    def center(self, f: Figure) -> str:
        if f.text is not None and self.verbatim:
            return f.text.split(" ± ")[0].split(" [")[0]
        x = f.center * self.factor
        return self.number(abs(x) if self.use_abs else x, f, self.signed and not self.use_abs)

    def key(self, f: Figure) -> float:
        return abs(f.center) if self.use_abs else f.center


def format_figures(figures: Sequence[Figure], opts: dict[str, str], *, signed: bool = False) -> str:
    """The text a placeholder's figures render to (see the module docstring for ``opts``)."""
    show = opts.get("show", "both")
    if show not in _SHOWS:
        raise ValueError(f"show={show!r}: one of {', '.join(_SHOWS)}")
    if opts.get("sign", "+") not in ("+", "none"):
        raise ValueError(f"sign={opts['sign']!r}: + or none")
    fmt = _Format(int(opts["digits"]) if "digits" in opts else None,
                  {"+": True, "none": False}.get(opts.get("sign", ""), signed),
                  opts.get("abs", "no") in ("yes", "1", "true"),
                  float(opts.get("scale", 1)) / float(opts.get("divide", 1)),
                  opts.get("group", "no") in ("yes", "1", "true"), "sign" in opts)
    if show in ("range", "min", "max"):
        ordered = sorted((f for f in figures if math.isfinite(f.center)), key=fmt.key)
        if not ordered:
            raise ValueError("selects no finite value")
        lo, hi = fmt.center(ordered[0]), fmt.center(ordered[-1])
        if show != "range":
            return lo if show == "min" else hi
        return lo if lo == hi else f"{lo}-{hi}"
    if show == "maxabs":  # over every cell selected
        f = max(figures, key=lambda f: f.max_abs)
        if not math.isfinite(f.max_abs):
            raise ValueError("show=maxabs is a paired difference's largest absolute value")
        return (fmt.number(f.max_abs * fmt.factor, f, False) if fmt.digits is not None
                else f"{f.max_abs * fmt.factor:.4g}")
    if len(figures) != 1:
        raise ValueError(f"selects {len(figures)} values; name one (or show=range, min, max)")
    f = figures[0]
    if f.text is not None and fmt.verbatim and show == "both":
        return f.text  # as the table prints it: "0.06 ± 0.38", "1.02 [1.00, 1.04]"
    hw = f.half_width * fmt.factor
    if show in ("hw", "interval") and not math.isfinite(hw):
        raise ValueError(f"show={show}: this value has no interval")
    if show == "hw":
        if f.text is not None and fmt.verbatim:
            return f.text.split(" ± ")[1]
        return fmt.number(hw, f, False)
    center = fmt.center(f)
    if show == "interval":  # as the tuning picks print a paired gap: +3.27 [+1.86, +4.69]
        x = f.center * fmt.factor
        return f"{center} [{fmt.number(x - hw, f)}, {fmt.number(x + hw, f)}]"
    if show == "mean" or not math.isfinite(hw):
        return center
    return f"{center} ± {fmt.number(hw, f, False)}"


# --------------------------------------------------------------------------------- pages
def parse_placeholder(args: str) -> tuple[list[str], dict[str, str]]:
    """``'a.csv method="DPS" digits=1'`` -> (["a.csv"], {"method": "DPS", "digits": "1"})."""
    files: list[str] = []
    opts: dict[str, str] = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        if sep and re.fullmatch(r"[a-z][\w-]*", key):
            if key in opts:
                raise ValueError(f"{key}= is given twice")
            opts[key] = value
        else:
            files.append(word)
    return files, opts


def render_placeholder(kind: str, args: str, *, page: str = "<page>",
                       bench_dir: str | Path | None = None,
                       paper_figures: str | Path | None = None) -> str:
    """The text of one placeholder ``{{ KIND ARGS }}`` (see the module docstring)."""
    bench = Path(bench_dir) if bench_dir is not None else benchmarks_dir()
    root = bench.resolve().parent
    ctx = _Context(page, f"{{{{ {kind} {' '.join(args.split())} }}}}", bench, root,
                   Path(paper_figures) if paper_figures is not None else root / PAPER_FIGURES)
    try:
        files, opts = parse_placeholder(args)
    except ValueError as e:
        raise ctx.error(str(e)) from None
    if kind == "paper":
        if opts:
            raise ctx.error(f"takes an id alone, not {', '.join(opts)}=")
        return _paper(ctx, files, opts)
    if kind == "row":
        return _row(ctx, files, opts)
    if kind not in _KINDS:
        raise ctx.error(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    figures = _KINDS[kind](ctx, files, opts)
    try:
        return format_figures(figures, opts, signed=kind == "paired")
    except ValueError as e:
        raise ctx.error(str(e)) from None


def expand_figures(markdown: str, page: str = "<page>", bench_dir: str | Path | None = None,
                   paper_figures: str | Path | None = None) -> str:
    """``markdown`` with every ``{{ KIND ARGS }}`` replaced by its figure, read from the committed
    files (``bench_dir``: ``benchmarks/`` of this checkout by default). Raises
    :class:`~diffinv.docs_bench.MissingBenchmarkError` or :class:`FigureError` naming the
    placeholder and ``page``."""
    def one(m: re.Match[str]) -> str:
        return render_placeholder(m.group(1), m.group(2), page=page, bench_dir=bench_dir,
                                  paper_figures=paper_figures)

    return PLACEHOLDER.sub(one, markdown)


def strip_placeholders(markdown: str, mark: str = "") -> str:
    """``markdown`` with every placeholder replaced by ``mark`` (what is left was typed by
    hand)."""
    return PLACEHOLDER.sub(mark, markdown)


# -------------------------------------------------------------------------------- the README
def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else benchmarks_dir().resolve().parent


def render_readme(root: str | Path | None = None) -> str:
    """``README.md`` as ``docs/README.template.md`` expands from the committed files of the
    checkout at ``root`` (this module's checkout by default)."""
    base = _root(root)
    template = (base / README_TEMPLATE).read_text(encoding="utf-8")
    return expand_figures(template, page=README_TEMPLATE, bench_dir=base / "benchmarks",
                          paper_figures=base / PAPER_FIGURES)


def write_readme(root: str | Path | None = None) -> bool:
    """Write ``README.md`` from the template (atomically: a temporary file in the same folder,
    then renamed over it). Returns whether its text changed."""
    base = _root(root)
    text = render_readme(base)
    path = base / README
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{README}.", suffix=".tmp", dir=base)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if path.is_file():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def readme_diff(root: str | Path | None = None) -> list[str]:
    """The unified diff from the committed ``README.md`` to the one the template expands to
    (empty when it is up to date)."""
    base = _root(root)
    path = base / README
    have = path.read_text(encoding="utf-8") if path.is_file() else ""
    want = render_readme(base)
    return list(difflib.unified_diff(have.splitlines(), want.splitlines(), f"{README} (committed)",
                                     f"{README} (from {README_TEMPLATE})", lineterm=""))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffinv.docs_figures --readme | --check [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m diffinv.docs_figures",
        description=f"Write {README} from {README_TEMPLATE}, its figures read from the committed "
                    "benchmark files (see this module's docstring for the placeholders).")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--readme", action="store_true", help=f"rewrite {README} (atomically)")
    what.add_argument("--check", action="store_true",
                      help=f"exit 1, with a diff, if {README} is not what the template expands to")
    parser.add_argument("--root", default=None,
                        help="the repository root (default: the checkout this module lies in)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            diff = readme_diff(args.root)
            if not diff:
                print(f"{README} is up to date with {README_TEMPLATE}")
                return 0
            body = [line for line in diff if not line.startswith(("---", "+++"))]
            gone = sum(line[:1] == "-" for line in body)
            new = sum(line[:1] == "+" for line in body)
            print(f"{README} is stale: {gone} line(s) of it would be replaced by {new} from "
                  f"{README_TEMPLATE} and the committed benchmark files; run `make readme` "
                  "(python -m diffinv.docs_figures --readme)", file=sys.stderr)
            shown = diff[:80]
            print("\n".join(shown), file=sys.stderr)
            if len(diff) > len(shown):
                print(f"... ({len(diff) - len(shown)} more diff lines)", file=sys.stderr)
            return 1
        changed = write_readme(args.root)
        print(f"{README} {'written' if changed else 'unchanged'} (from {README_TEMPLATE})")
        return 0
    except (BenchmarkFormatError, MissingBenchmarkError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
