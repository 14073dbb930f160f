"""The documentation pages built from the committed benchmark tables, at build time.

``docs/hooks.py`` calls :func:`benchmark_pages` (the "choosing a solver" pages of :data:`CHOOSING`,
read from the benchmark CSVs committed in ``benchmarks/``, and the gallery page) and
:func:`site_files` (the gallery pictures, added to the site from ``benchmarks/`` rather than copied
into ``docs/``). Every figure on these pages is read from a CSV when the site is built, so a re-run
table updates its page; a benchmark file a page needs and that is missing raises
:class:`MissingBenchmarkError` naming it and the command that writes it. The pages generated from
the registries are :mod:`diffinv.docs_gen`'s.

The page functions return Markdown; nothing here needs mkdocs, so the tests call them directly.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diffinv.docs_gen import FENCE as _FENCE
from diffinv.docs_gen import table_cell as _cell

if TYPE_CHECKING:
    from diffinv.bench.stats import Summary

# ------------------------------------------------------------------------ choosing a solver
# The pages below are built from the benchmark tables committed in ``benchmarks/`` (the CSVs that
# ``diffinv bench`` writes beside its Markdown tables): every figure on them is read from a CSV
# when the site is built, so a re-run table updates the page and a missing one stops the build.

#: the method label of the do-nothing row that the runner adds to a table (solver ``identity``)
DO_NOTHING = "measurement as the estimate (y)"
_CSV_COLUMNS = ("method", "task", "column", "statistic", "value", "ci_low", "ci_high", "n",
                "target", "complete")


class MissingBenchmarkError(FileNotFoundError):
    """A committed benchmark file that a generated page is built from is not there."""


class BenchmarkFormatError(ValueError):
    """A benchmark CSV that lacks what a generated page reads from it."""


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout this module lies in (the site is built from one)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def _bench_dir(bench_dir: str | Path | None) -> Path:
    return benchmarks_dir() if bench_dir is None else Path(bench_dir)


@dataclass(frozen=True)
class BenchRow:
    """One (method, task) row of a benchmark CSV: its PSNR, s/image and NFE summaries and N."""

    csv: str
    method: str
    task: str
    psnr: Summary | None
    seconds: Summary | None
    nfe: Summary | None
    n: int
    target: int
    complete: bool


@dataclass(frozen=True)
class BenchTable:
    """A benchmark CSV: its ``# Key: value`` header lines and its rows, in the file's order."""

    name: str
    path: Path
    header: dict[str, list[str]]
    rows: tuple[BenchRow, ...]
    title: str

    @property
    def command(self) -> str:
        return (self.header.get("Command") or [f"diffinv bench benchmarks/tasks/{self.name}.toml"])[0]

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.rows))

    def methods(self, task: str | None = None) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows if task in (None, r.task)))


def _missing(what: str, path: Path, name: str) -> MissingBenchmarkError:
    return MissingBenchmarkError(
        f"the documentation is built from {what} ({path} does not exist). It is written by "
        f"`diffinv bench benchmarks/tasks/{name}.toml` and committed with the repository: "
        f"restore it (`git checkout -- benchmarks/{path.name}`) or rerun that command")


def csv_float(text: str | None) -> float:
    """A CSV cell as a float (empty or unreadable: NaN)."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_bench_csv(path: Path) -> tuple[list[str], list[dict[str, str]], dict[str, list[str]]]:
    """The columns and rows of a CSV that ``diffinv bench`` writes and its ``# Key: value`` header
    lines (each key's values in file order)."""
    header: dict[str, list[str]] = {}
    body = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(": ")
            if sep:
                header.setdefault(key, []).append(value)
        elif line.strip():
            body.append(line)
    reader = csv.DictReader(body)
    return list(reader.fieldnames or []), list(reader), header


def read_bench_table(name: str, bench_dir: str | Path | None = None) -> BenchTable:
    """``benchmarks/NAME.csv`` (as ``diffinv bench`` writes it), with the title of ``NAME.md``.

    Raises :class:`MissingBenchmarkError` naming the file and the command that writes it when the
    CSV is missing, :class:`BenchmarkFormatError` when it lacks the columns of a bench table."""
    from diffinv.bench.stats import Summary

    path = _bench_dir(bench_dir) / f"{name}.csv"
    if not path.is_file():
        raise _missing(f"benchmarks/{name}.csv", path, name)
    columns, records, header = read_bench_csv(path)
    lacking = [c for c in _CSV_COLUMNS if c not in columns]
    if lacking:
        raise BenchmarkFormatError(f"{path} has no column {', '.join(lacking)}: the docs read "
                                   "the CSV that `diffinv bench` writes beside its table")
    cells: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
    for r in records:
        cells.setdefault((r["method"], r["task"], r.get("prior") or ""), {})[r["column"]] = r
    several_priors = len({prior for _, _, prior in cells}) > 1

    def summary(r: dict[str, str] | None) -> Summary | None:
        if r is None:
            return None
        return Summary(r["statistic"], csv_float(r["value"]), csv_float(r["ci_low"]),
                       csv_float(r["ci_high"]), int(csv_float(r["n"])) if r["n"] else 0)

    rows = []
    for (method, task, prior), cols in cells.items():
        first = cols.get("psnr") or next(iter(cols.values()))
        rows.append(BenchRow(
            csv=name, method=method, task=f"{task} ({prior})" if several_priors else task,
            psnr=summary(cols.get("psnr")), seconds=summary(cols.get("seconds")),
            nfe=summary(cols.get("nfe")), n=int(csv_float(first["n"])),
            target=int(csv_float(first["target"])), complete=first["complete"] not in ("0", "")))
    md = path.with_suffix(".md")
    title = ""
    if md.is_file():
        head = md.read_text(encoding="utf-8").split("\n", 1)[0]
        title = head[2:].strip() if head.startswith("# ") else ""
    return BenchTable(name, path, header, tuple(rows), title)


@dataclass(frozen=True)
class Source:
    """Rows a page takes from one CSV: every task and method, or the ones named."""

    csv: str
    tasks: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ChoicePage:
    """A "choosing a solver" page: a problem class, the CSVs its tables come from, and the fixed
    (figure-free) part of its text; every figure is read from the CSVs when the page is built."""

    path: str
    title: str
    summary: str  # one line for the overview page
    problem: str  # the problem class and which solvers apply
    advice: str  # ends the recommendation
    sources: tuple[Source, ...]
    #: "task": one table per task; "operator": one per operator (the task label's first word),
    #: the tasks of one in a column of their own
    section: str = "task"


CHOOSING: tuple[ChoicePage, ...] = (
    ChoicePage(
        path="choosing/linear-svd.md",
        title="Linear problems with an SVD",
        summary="super-resolution, inpainting, Gaussian and motion deblurring",
        problem=(
            "Super-resolution by average pooling, random and box inpainting, Gaussian and motion "
            "deblurring with circular boundaries: linear operators whose singular value "
            "decomposition diffinv knows. Every solver for a known operator runs on them, those "
            "that need the SVD included (`ddrm`, `pigdm`, `dmps`, `mcg`, `admm-pnp`; `ilvr` on "
            "average-pooling super-resolution only; `davi` where a generator was trained for the "
            "task, see [Amortised](amortised.md)); the [solver reference](../reference/solvers.md) "
            "says what each one needs. DMPlug's rows come from `benchmarks/dmplug_linear.csv`, a table that "
            "reuses this one's rows of the other methods (the same images, tasks and seed)."),
        advice=(
            "These are 32x32 fashion32 images with the `tuned32` hyper-parameters (each table's "
            "`.md` lists them); on a prior of your own, tune on validation images first "
            "(`benchmarks/tasks/tune_linear.toml` shows how) before trusting the ranking."),
        sources=(Source("linear"), Source("dmplug_linear", methods=("DMPlug+ES-WMV",))),
    ),
    ChoicePage(
        path="choosing/nonlinear.md",
        title="Differentiable nonlinear problems",
        summary="a nonlinear forward model with gradients (nonlinear blur)",
        problem=(
            "A forward model that is not linear but can be differentiated, here `nonlinear-blur` "
            "(non-uniform motion blur with a saturating response, see the "
            "[operator reference](../reference/operators.md)). Only the solvers that use the "
            "operator's gradients apply: `dps`, `dps-nll`, `daps`, `red-diff`, `dmplug` and "
            "`diffpir`; the SVD solvers refuse it. The `DMPlug 5k` row is DMPlug's last iterate "
            "at a fixed budget, without early stopping; `benchmarks/dmplug_nonlinear.md` gives "
            "the ES-WMV pick beside it."),
        advice=(
            "For a nonlinear operator of your own, subclass `diffinv.physics.Operator` or wrap a "
            "deepinv physics (see [Bring your own](../bring-your-own.md)): every solver of this "
            "page then runs on it."),
        sources=(Source("dmplug_nonlinear"),),
    ),
    ChoicePage(
        path="choosing/blind-kernel.md",
        title="Blind deblurring: unknown kernel",
        summary="motion or Gaussian blur whose kernel is unknown",
        problem=(
            "The blur kernel is unknown (`blind-motion-blur`, `blind-gaussian-blur`): the "
            "measurement record hides it and the solver estimates it with the image. The kernel "
            "methods `blind-dps`, `gibbsddrm`, `fastem`, `pan-l0` and `selfdeblur` apply; "
            "`dmplug` and `red-diff` with `--blind`; `cl-dps`, which never reads the operator; "
            "and `supervised-unet`, a network trained here on blurred pairs. The row marked "
            "`reference` is given the true kernel: it shows what knowing the kernel is worth and "
            "is not an option for a blind measurement."),
        advice=(
            "The row marked `reference` is left out of the pick. The CL-DPS encoder behind its "
            "rows is a short training run (see `benchmarks/blind_linear.md`), so those rows say "
            "little about CL-DPS with a converged encoder."),
        sources=(Source("blind_linear"),),
    ),
    ChoicePage(
        path="choosing/blind-non-convolutional.md",
        title="Blind rotation and zoom blur",
        summary="non-convolutional blur (rotation, zoom) with an unknown parameter",
        problem=(
            "Blurs that are not convolutions and whose parameter is unknown "
            "(`blind-rotation-blur`, `blind-zoom-blur`). Methods marked `knows the family` "
            "(`dmplug`, `red-diff` with `--blind`) are told which family the blur belongs to and "
            "fit its parameter; those marked `9x9 conv. model` model it as a convolution, which "
            "it is not; `cl-dps` never reads the operator; `supervised-unet` was trained on "
            "blurred pairs of these families. The row marked `reference` is given the true "
            "operator."),
        advice=(
            "The row marked `reference` is left out of the pick. The rows marked `knows the "
            "family` show what telling a method the blur's family is worth here, against the "
            "rows that assume a convolution."),
        sources=(Source("cldps_nonlinear"),),
    ),
    ChoicePage(
        path="choosing/unknown-noise.md",
        title="Unknown noise",
        summary="noise of an unknown type and level (Gaussian, impulse, shot, speckle)",
        problem=(
            "The noise model is not known: each method assumes Gaussian noise (DMPlug with its "
            "MSE loss, DPS with its L2 residual) while the measurement carries Gaussian, impulse, "
            "shot (Poisson) or speckle noise at two levels, L2 and L4 (each task's noise is "
            "listed above its table). When the noise model is known, `dps-nll` descends its "
            "likelihood instead (see [noise models](../reference/noise.md))."),
        advice=(
            "DMPlug's row is its ES-WMV pick; the CSV's `oracle` column (its best iterate, "
            "chosen with the truth) is not a result and is not shown."),
        sources=(Source("dmplug_noise"),),
        section="operator",
    ),
    ChoicePage(
        path="choosing/amortised.md",
        title="Amortised (DAVI)",
        summary="one network call per image, a generator trained per task",
        problem=(
            "DAVI restores an image with one call of a generator trained for one prior and one "
            "operator with its settings (`diffinv train-davi`; generators ship for fashion32, see "
            "the [solver reference](../reference/solvers.md)). Training costs once, so it pays "
            "when many measurements of one task are restored. The other rows come from "
            "`benchmarks/linear.csv`, whose measurements DAVI's table reuses "
            "(`benchmarks/davi.md`)."),
        advice=(
            "Compare the captions' machines before comparing times: DAVI's s/image is its "
            "batch's time divided by the batch's images. A generator is tied to its prior, "
            "operator settings and noise level: a new task means a new training run."),
        sources=(Source("davi"), Source("linear", tasks=("sr4", "inpaint-box", "gauss-deblur"))),
    ),
)


def choosing_spec(path: str) -> ChoicePage:
    for page in CHOOSING:
        if page.path == path:
            return page
    raise KeyError(f"no choosing-a-solver page {path!r} (pages: {', '.join(p.path for p in CHOOSING)})")


def choosing_rows(page: ChoicePage, bench_dir: str | Path | None = None
                  ) -> tuple[list[BenchTable], list[BenchRow]]:
    """The tables a page reads and the rows it shows (a named task or method that its CSV lacks
    is an error)."""
    tables, rows = [], []
    for src in page.sources:
        table = read_bench_table(src.csv, bench_dir)
        for what, wanted, have in (("task", src.tasks, table.tasks()),
                                   ("method", src.methods, table.methods())):
            lacking = [w for w in wanted or () if w not in have]
            if lacking:
                raise BenchmarkFormatError(f"{table.path} has no {what} {', '.join(lacking)} "
                                           f"(the page {page.path} shows it)")
        tables.append(table)
        rows += [r for r in table.rows if (src.tasks is None or r.task in src.tasks)
                 and (src.methods is None or r.method in src.methods)]
    return tables, rows


def _fmt(s: Summary | None) -> str:
    from diffinv.bench.report import format_summary

    if s is None or s.n == 0 or not math.isfinite(s.center):
        return "–"
    return format_summary(s)


def _finite(s: Summary | None) -> bool:
    return s is not None and s.n > 0 and math.isfinite(s.center)


def _interval(s: Summary) -> tuple[float, float] | None:
    return (s.low, s.high) if math.isfinite(s.low) and math.isfinite(s.high) else None


def _overlap(a: Summary, b: Summary) -> bool:
    ia, ib = _interval(a), _interval(b)
    return ia is not None and ib is not None and ia[0] <= ib[1] and ib[0] <= ia[1]


def _is_reference(method: str) -> bool:
    """A row given what a real run would not have (the true kernel or operator)."""
    return "reference" in method.lower()


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _section_of(page: ChoicePage, task: str) -> str:
    return task.split(" ", 1)[0] if page.section == "operator" else task


def _task_settings(table: BenchTable) -> dict[str, str]:
    """``{task: "operator `X`, factor 4, noise `gaussian:0.05`"}`` from the task file named by the
    CSV's command ({} where it cannot be read: the line is then left out)."""
    m = re.search(r"diffinv bench (\S+\.toml)", table.command)
    toml_path = (table.path.parent.parent / m.group(1) if m
                 else table.path.parent / "tasks" / f"{table.name}.toml")
    try:
        try:
            import tomllib
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        spec = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ModuleNotFoundError):
        return {}
    out = {}
    for t in spec.get("tasks", []):
        if not isinstance(t, dict) or "name" not in t:
            continue
        parts = [f"operator `{t['operator']}`"] if "operator" in t else []
        parts += [f"{k} {v}" for k, v in t.items() if k not in ("name", "operator", "noise")]
        if "noise" in t:
            parts.append(f"noise `{t['noise']}`")
        out[str(t["name"])] = ", ".join(parts)
    return out


def _n_text(rows: list[BenchRow]) -> str:
    ns = sorted({r.n for r in rows})
    done = all(r.complete for r in rows)
    text = f"N = {ns[0]} images per row" if len(ns) == 1 else (
        f"N = {ns[0]} to {ns[-1]} images (each row's N column)")
    return text + ("" if done else "; N = n/target* marks a row short of its target")


def _caption(table: BenchTable, rows: list[BenchRow]) -> str:
    """What a table's rows from one CSV are: the file, its title, command, machines, run, N."""
    parts = [f"`benchmarks/{table.name}.csv`" + (f", {table.title}" if table.title else ""),
             f"Command: `{table.command}`"]
    machines = table.header.get("Machine", [])
    if machines:
        parts.append(("Machines: " if len(machines) > 1 else "Machine: ") + "; ".join(machines))
    if table.header.get("Run"):
        parts.append(f"Run: {table.header['Run'][0]}")
    stat = table.header.get("Cells", [""])[0].split(";")[0]
    parts.append(_n_text(rows) + (f"; {stat}" if stat else ""))
    return ". ".join(parts).replace("*", "\\*") + "."


def _by_psnr(rows: list[BenchRow]) -> list[BenchRow]:
    return sorted(rows, key=lambda r: -r.psnr.center if _finite(r.psnr) else math.inf)


def _table(rows: list[BenchRow], tables: list[BenchTable], *, task_column: bool,
           csv_column: bool) -> str:
    head = (["task"] if task_column else []) + ["method", "PSNR (dB)", "s/image", "NFE", "N"] + (
        ["CSV"] if csv_column else [])
    align = (["---"] if task_column else []) + ["---", "--:", "--:", "--:", "--:"] + (
        ["---"] if csv_column else [])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    tasks = list(dict.fromkeys(r.task for r in rows))
    ordered = [r for t in tasks for r in _by_psnr([r for r in rows if r.task == t])]
    for r in ordered:
        n = str(r.n) if r.complete else f"{r.n}/{r.target}\\*"
        cells = ([_cell(r.task)] if task_column else []) + [
            _cell(r.method), _fmt(r.psnr), _fmt(r.seconds), _fmt(r.nfe), n] + (
            [f"`{r.csv}.csv`"] if csv_column else [])
        out.append("| " + " | ".join(cells) + " |")
    captions = [_caption(t, [r for r in rows if r.csv == t.name])
                for t in tables if any(r.csv == t.name for r in rows)]
    out.append("")
    for i, caption in enumerate(captions):
        out.append(("" if i == 0 else "\n") + ("Source: " if len(captions) == 1 else
                                               f"Source {i + 1}: ") + caption)
    return "\n".join(out) + "\n"


def _best_sentence(task: str, rows: list[BenchRow]) -> str:
    cands = [r for r in rows if r.method != DO_NOTHING and not _is_reference(r.method)
             and _finite(r.psnr)]
    if not cands:
        return f"On {task} no method has a PSNR."
    best = max(cands, key=lambda r: r.psnr.center)  # type: ignore[union-attr]
    text = (f"On {task}, {best.method} has the highest mean PSNR ({_fmt(best.psnr)} dB, "
            f"{_fmt(best.seconds)} s/image)")
    if _interval(best.psnr) is None:  # type: ignore[arg-type]
        return text + " (too few images for an interval)."
    level = [r for r in cands if r is not best and _overlap(r.psnr, best.psnr)]  # type: ignore[arg-type]
    if not level:
        return text + "; no other method's interval reaches it."
    text += f"; {_join([r.method for r in level])} {'is' if len(level) == 1 else 'are'} level with it"
    timed = [r for r in [best, *level] if _finite(r.seconds)]
    cheapest = min(timed, key=lambda r: r.seconds.center) if timed else best  # type: ignore[union-attr]
    if cheapest is not best:
        text += f", and the cheapest of these is {cheapest.method} ({_fmt(cheapest.seconds)} s/image)"
    ns = sorted({r.n for r in cands})
    if len(ns) > 1:
        text += (f" (the rows do not all cover the same images: N runs from {ns[0]} to {ns[-1]}, "
                 "so the paired files compare them better)")
    return text + "."


def _input_sentence(task: str, rows: list[BenchRow]) -> str | None:
    """Which rows beat the measurement itself on ``task`` (None: the CSV has no do-nothing row)."""
    y = next((r for r in rows if r.method == DO_NOTHING and _finite(r.psnr)), None)
    if y is None:
        return None
    groups: dict[str, list[str]] = {"above": [], "level": [], "below": []}
    for r in _by_psnr([r for r in rows if r is not y and _finite(r.psnr)]):
        if _interval(r.psnr) and _interval(y.psnr) and r.psnr.low > y.psnr.high:  # type: ignore[union-attr]
            groups["above"].append(r.method)
        elif _interval(r.psnr) and _interval(y.psnr) and r.psnr.high < y.psnr.low:  # type: ignore[union-attr]
            groups["below"].append(r.method)
        else:
            groups["level"].append(r.method)
    parts = [f"above it (intervals apart): {_join(groups['above']) if groups['above'] else 'none'}"]
    if groups["level"]:
        parts.append(f"intervals overlapping its: {_join(groups['level'])}")
    if groups["below"]:
        parts.append(f"below it (intervals apart), i.e. further from the truth than the input: "
                     f"{_join(groups['below'])}")
    return (f"The measurement itself (`{DO_NOTHING}`) scores {_fmt(y.psnr)} dB on {task}; "
            + "; ".join(parts) + ".")


def _aggregate_sentence(section: str, rows: list[BenchRow]) -> str:
    """For a section of several tasks: which method has the best mean on which of them, and
    where its interval is apart from every other row's."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    wins: dict[str, list[str]] = {}
    clear: dict[str, list[str]] = {}
    for t in tasks:
        cands = [r for r in rows if r.task == t and r.method != DO_NOTHING
                 and not _is_reference(r.method) and _finite(r.psnr)]
        if not cands:
            continue
        best = max(cands, key=lambda r: r.psnr.center)  # type: ignore[union-attr]
        short = t[len(section):].strip() if t.startswith(section + " ") else t
        wins.setdefault(best.method, []).append(short)
        others = [r for r in cands if r is not best]
        if others and _interval(best.psnr) and all(  # type: ignore[arg-type]
                _interval(r.psnr) and r.psnr.high < best.psnr.low for r in others):  # type: ignore[union-attr,arg-type]
            clear.setdefault(best.method, []).append(short)
    parts = []
    for method, won in sorted(wins.items(), key=lambda kv: -len(kv[1])):
        apart = clear.get(method, [])
        parts.append(f"{method} on {len(won)} ({', '.join(won)}; intervals apart from the other "
                     f"rows' on {_join(apart) if apart else 'none'})")
    return (f"Of the {len(tasks)} `{section}` tasks, the highest mean PSNR is that of "
            + _join(parts) + ".")


def _paired_files(tables: list[BenchTable]) -> list[str]:
    out = []
    for t in tables:
        out += [f"`benchmarks/{p.name}`" for p in sorted(t.path.parent.glob(f"{t.name}_paired*.md"))]
    return out


def _recommendation(page: ChoicePage, tables: list[BenchTable], sections: dict[str, list[BenchRow]]
                    ) -> str:
    text = [("Take the table of the task closest to yours and the cheapest method that is level "
             "with its best one. Level means that the two rows' 95% intervals overlap; these "
             "intervals are per row, not paired, so they separate methods less sharply than "
             "paired differences do.")]
    has_y = False
    for section, rows in sections.items():
        tasks = list(dict.fromkeys(r.task for r in rows))
        if len(tasks) == 1:
            text.append(_best_sentence(tasks[0], rows))
        else:
            text.append(_aggregate_sentence(section, rows))
        for t in tasks:
            s = _input_sentence(t, [r for r in rows if r.task == t])
            if s:
                has_y = True
                text.append(s)
    if not has_y:
        text.append(f"{'This CSV has' if len(tables) == 1 else 'These CSVs have'} no do-nothing "
                    f"row (`{DO_NOTHING}`), so this page cannot show which methods beat their "
                    "input.")
    paired = _paired_files(tables)
    if paired:
        text.append(f"Paired differences over the same images: {', '.join(paired)}.")
    text.append(page.advice)
    return " ".join(text)


def choosing_page(path: str, bench_dir: str | Path | None = None) -> str:
    """The Markdown of one "choosing a solver" page (see :data:`CHOOSING`), read from its CSVs."""
    page = choosing_spec(path)
    tables, rows = choosing_rows(page, bench_dir)
    sections: dict[str, list[BenchRow]] = {}
    for r in rows:
        sections.setdefault(_section_of(page, r.task), []).append(r)
    settings: dict[str, str] = {}
    for t in reversed(tables):  # the first source's task file wins
        settings.update(_task_settings(t))
    names = ", ".join(f"benchmarks/{t.name}.csv" for t in tables)
    out = [f"<!-- generated by diffinv.docs_gen at build time from {names}: do not edit "
           "(every figure is read from the CSV) -->\n\n",
           f"# {page.title}\n\n", f"{page.problem}\n\n",
           f"## Recommendation\n\n{_recommendation(page, tables, sections)}\n"]
    for section, srows in sections.items():
        tasks = list(dict.fromkeys(r.task for r in srows))
        out.append(f"\n## {section}\n\n")
        known = [(t, settings[t]) for t in tasks if t in settings]
        if len(known) == 1 and len(tasks) == 1:
            out.append(f"Task settings: {known[0][1]}.\n\n")
        elif known:
            out.append("Task settings: " + "; ".join(f"`{t}`: {s}" for t, s in known) + ".\n\n")
        out.append(_table(srows, tables, task_column=len(tasks) > 1,
                          csv_column=len({r.csv for r in rows}) > 1))
    return "".join(out)


def choosing_index_page() -> str:
    out = ["<!-- generated by diffinv.docs_gen at build time: do not edit -->\n\n",
           "# Choosing a solver\n\n",
           "One page per kind of problem. Each shows what the benchmark tables committed in "
           "`benchmarks/` measured for it: per method the mean PSNR with the half-width of its "
           "95% interval, the seconds per image, the network evaluations (NFE) and the number of "
           "test images N, read from the CSVs when this site is built, then a recommendation "
           "drawn from those figures. Where a table has the do-nothing row (the measurement "
           "itself as the estimate), the page says which methods beat their input. Every table "
           "names its CSV, the machines its rows ran on and the `diffinv bench` command that "
           "remakes it.\n\n",
           "| problem | what it covers | from |\n|---|---|---|\n"]
    for page in CHOOSING:
        rel = page.path.split("/", 1)[1]
        srcs = ", ".join(f"`{s.csv}.csv`" for s in page.sources)
        out.append(f"| [{page.title}]({rel}) | {_cell(page.summary)} | {srcs} |\n")
    return "".join(out)


# ------------------------------------------------------------------------------- galleries
GALLERY_PAGE = "galleries.md"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _gallery_sources(bench_dir: str | Path | None) -> list[Path]:
    d = _bench_dir(bench_dir)
    found = sorted(d.glob("*_gallery.md"))
    if not found:
        raise MissingBenchmarkError(
            f"the documentation's gallery page is built from benchmarks/*_gallery.md and the "
            f"pictures beside them, and {d} has none: they are written by `diffinv bench "
            "benchmarks/tasks/NAME.toml --gallery N` and committed with the repository")
    return found


def _gallery_images(md: Path) -> list[tuple[str, Path]]:
    """``(link as written, the file)`` of every picture a gallery's caption file shows."""
    root = md.parent.resolve()
    out = []
    for m in _IMAGE.finditer(md.read_text(encoding="utf-8")):
        link = m.group(2)
        f = (md.parent / link).resolve()
        if root not in f.parents:
            raise BenchmarkFormatError(f"{md}: the picture {link} lies outside {md.parent}")
        if not f.is_file():
            raise _missing(f"{link}, a picture of benchmarks/{md.name}", f,
                           md.stem.removesuffix("_gallery"))
        out.append((link, f))
    return out


def gallery_files(bench_dir: str | Path | None = None) -> dict[str, Path]:
    """``{path in the site: the committed picture}``: copied into the site at build time, never
    into ``docs/``."""
    files = {}
    for md in _gallery_sources(bench_dir):
        for link, f in _gallery_images(md):
            files[f"galleries/{link}"] = f
    return files


def galleries_page(bench_dir: str | Path | None = None) -> str:
    out = ["<!-- generated by diffinv.docs_gen at build time from benchmarks/*_gallery.md: do "
           "not edit -->\n\n", "# Galleries\n\n",
           "The pictures that `diffinv bench benchmarks/tasks/NAME.toml --gallery N` writes beside "
           "a table (`benchmarks/NAME_gallery/`), with their caption files "
           "(`benchmarks/NAME_gallery.md`) as sections; the site build copies them in. Each row "
           "of a picture is one test image; its columns are named above it.\n"]
    for md in _gallery_sources(bench_dir):
        _gallery_images(md)  # every picture is there (or a clear error)
        text = _IMAGE.sub(lambda m: f"![{m.group(1)}](galleries/{m.group(2)})",
                          md.read_text(encoding="utf-8"))
        lines, fenced = [], False
        for line in text.splitlines():
            if line.startswith(_FENCE):
                fenced = not fenced
            lines.append("#" + line if line.startswith("#") and not fenced else line)
        out.append("\n" + "\n".join(lines).strip() + "\n\n"
                   f"Caption file: `benchmarks/{md.name}`.\n")
    return "".join(out)


def benchmark_pages(bench_dir: str | Path | None = None) -> dict[str, str]:
    """``{path under docs/: Markdown}`` of the pages read from the committed benchmark tables."""
    pages = {"choosing/index.md": choosing_index_page()}
    pages.update({p.path: choosing_page(p.path, bench_dir) for p in CHOOSING})
    pages[GALLERY_PAGE] = galleries_page(bench_dir)
    return pages


def site_files(bench_dir: str | Path | None = None) -> dict[str, Path]:
    """``{path in the site: file}`` of the non-page files the generated pages show."""
    return gallery_files(bench_dir)
