"""The docs site's reference pages (``diffinv.docs_gen``) cover every registered solver, operator,
noise model, CLI sub-command and bench job kind; the "choosing a solver" pages show every row of
the benchmark CSVs they are built from; the gallery page every committed picture; the "Bring
your own" page names only options and functions that exist; and the result pages (docs/papers/)
quote every figure through a placeholder that ``diffinv.docs_figures`` reads from a committed
CSV, JSONL or table, as does the template that README.md is written from (``make readme``). The
generators are called directly: no mkdocs build here (``make docs`` builds the site)."""

from __future__ import annotations

import csv
import importlib
import inspect
import math
import re
import shutil
from pathlib import Path

import pytest

from diffinv import docs_bench, docs_figures, docs_gen

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return docs_gen.reference_pages()


def _headings(markdown: str, level: int = 2) -> set[str]:
    return set(re.findall(rf"^{'#' * level} (.+)$", markdown, flags=re.MULTILINE))


def test_every_page_is_generated(pages):
    assert set(pages) == set(docs_gen.PAGES)
    for path, text in pages.items():
        assert text.lstrip().startswith("<!-- generated"), path
        assert "\n# " in text, path


def test_every_solver_has_an_entry(pages):
    from diffinv.solvers.base import _REGISTRY, list_solvers

    names = [name for name, _, _ in list_solvers()]
    assert names and set(names) == set(_REGISTRY)
    text = pages["reference/solvers.md"]
    headings = _headings(text)
    for name, summary, _needs in list_solvers():
        assert name in headings, f"solver {name!r} has no section in the solver reference"
        assert f"[`{name}`](#" in text, f"solver {name!r} is missing from the solver table"
        assert summary in text
        doc = (_REGISTRY[name].__doc__ or "").strip().splitlines()
        if doc:  # the class docstring is rendered under its heading
            assert doc[0].split(":func:")[0].split(":class:")[0].strip()[:30] in text


def test_every_operator_has_an_entry(pages):
    from diffinv.physics.registry import OPERATORS

    text = pages["reference/operators.md"]
    for name in OPERATORS:
        assert f"| `{name}` |" in text, f"operator {name!r} is missing from the operator reference"


def test_every_noise_model_has_an_entry(pages):
    from diffinv.physics.noise import NOISE_MODELS, list_noise_models

    text = pages["reference/noise.md"]
    headings = _headings(text)
    for name in NOISE_MODELS:
        assert name in headings, f"noise model {name!r} has no section in the noise reference"
    for pattern, description in list_noise_models():
        assert f"| `{pattern}` | {description.replace('|', chr(92) + '|')} |" in text


def test_every_cli_sub_command_is_covered(pages):
    import argparse

    from diffinv.cli import COMMAND_MODULES, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = list(sub.choices)  # from the parser itself, not from the generator
    assert len(commands) >= len(COMMAND_MODULES)
    assert list(docs_gen.cli_commands()) == commands
    text = pages["reference/cli.md"]
    headings = _headings(text)
    for name in commands:
        assert f"diffinv {name}" in headings, f"`diffinv {name}` is missing from the CLI reference"
        assert f"usage: diffinv {name}" in text, f"`diffinv {name} --help` is not on the page"
    assert "diffinv" in headings  # the top-level --help


def test_task_file_format_lists_every_job_kind(pages):
    from diffinv.bench.catalog import job_kinds

    text = pages["reference/task-files.md"]
    for kind in job_kinds():
        assert f'kind = "{kind}"' in text, f"job kind {kind!r} is missing from the task-file page"


def test_a_new_solver_appears_without_editing_the_docs(monkeypatch):
    from diffinv.solvers import base

    base._load_builtin()

    class Fresh(base.Solver):
        """A solver registered after the docs were written."""

        summary = "fresh: registered by a test"

    monkeypatch.setitem(base._REGISTRY, "zz-fresh", Fresh)
    text = docs_gen.solvers_page()
    assert "## zz-fresh" in text and "registered after the docs were written" in text


# ------------------------------------------------------------------------ choosing a solver
@pytest.fixture(scope="module")
def bench_pages() -> dict[str, str]:
    return docs_bench.benchmark_pages(BENCH)


def _csv_rows(name: str) -> list[dict[str, str]]:
    """A benchmark CSV's rows, read here (not through the generator)."""
    with open(BENCH / f"{name}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _source_rows(src: docs_bench.Source) -> list[dict[str, str]]:
    return [r for r in _csv_rows(src.csv) if (src.tasks is None or r["task"] in src.tasks)
            and (src.methods is None or r["method"] in src.methods)]


def _table_rows(markdown: str) -> list[tuple[str, list[str]]]:
    """``(the ## heading above it, its cells)`` of every table row of a page."""
    out, heading = [], ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("| "):
            out.append((heading, [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]))
    return out


def _rows_for(rows: list[tuple[str, list[str]]], task: str, method: str) -> list[list[str]]:
    return [cells for heading, cells in rows
            if method in cells and (heading == task or task in cells)]


def _shown_mean(cell: str) -> tuple[float, float]:
    """``"21.13 ± 0.85"`` -> (21.13, the rounding step of 21.13)."""
    mean = cell.split(" ")[0]
    decimals = len(mean.split(".")[1]) if "." in mean else 0
    return float(mean), 10.0 ** -decimals


def test_every_benchmark_page_is_generated_and_in_the_nav(bench_pages):
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert {p.path for p in docs_bench.CHOOSING} < set(bench_pages)
    for path, text in bench_pages.items():
        assert text.lstrip().startswith("<!-- generated"), path
        assert "\n# " in text, path
        assert re.search(rf":\s+{re.escape(path)}\s*$", nav, flags=re.MULTILINE), \
            f"{path} is not in the nav of mkdocs.yml"
    assert "bring-your-own.md" in nav


@pytest.mark.parametrize("page", docs_bench.CHOOSING, ids=lambda p: p.path)
def test_every_choosing_page_lists_every_method_of_its_csvs(page, bench_pages):
    text = bench_pages[page.path]
    rows = _table_rows(text)
    for src in page.sources:
        # the caption names the CSV and the command that remakes it
        assert f"`benchmarks/{src.csv}.csv`" in text
        assert f"`diffinv bench benchmarks/tasks/{src.csv}.toml`" in text
        wanted = {(r["task"], r["method"]): r for r in _source_rows(src) if r["column"] == "psnr"}
        assert wanted, f"{src.csv}.csv gives {page.path} no rows"
        for (task, method), r in wanted.items():
            found = _rows_for(rows, task, method)
            assert len(found) == 1, (f"{page.path}: {len(found)} rows for {method!r} on "
                                     f"{task!r} of {src.csv}.csv (want 1)")
            cells = found[0]
            psnr = next(c for c in cells if "±" in c or re.fullmatch(r"[-\d.]+", c))
            shown, step = _shown_mean(psnr)
            assert math.isclose(shown, float(r["value"]), abs_tol=step / 2 + 1e-9), \
                f"{page.path}: {method} on {task} shows {psnr}, the CSV has {r['value']}"
            assert (r["n"] if r["complete"] == "1" else f"{r['n']}/{r['target']}\\*") in cells


def test_the_do_nothing_row_is_shown_where_the_csv_has_it(bench_pages):
    seen = 0
    for page in docs_bench.CHOOSING:
        text = bench_pages[page.path]
        rows = _table_rows(text)
        advice = text.split("## Recommendation", 1)[1].split("\n## ", 1)[0]
        y_tasks = {r["task"] for src in page.sources for r in _source_rows(src)
                   if r["method"] == docs_bench.DO_NOTHING}
        for task in y_tasks:
            seen += 1
            assert _rows_for(rows, task, docs_bench.DO_NOTHING), \
                f"{page.path}: the do-nothing row of {task!r} is missing"
            assert re.search(rf"scores [^;]* dB on {re.escape(task)};", advice), \
                f"{page.path}: the recommendation does not compare the methods with y on {task!r}"
        if not y_tasks:  # says that it cannot tell who beats the input
            assert "no do-nothing row" in advice, page.path
    assert seen, "no page shows a do-nothing row: the blind tables have one"


def test_a_missing_benchmark_csv_is_a_clear_error(tmp_path):
    with pytest.raises(docs_bench.MissingBenchmarkError,
                       match=r"benchmarks/blind_linear\.csv .*`diffinv bench "
                             r"benchmarks/tasks/blind_linear\.toml`"):
        docs_bench.choosing_page("choosing/blind-kernel.md", bench_dir=tmp_path)
    # a page of two CSVs: the second one missing is named too
    shutil.copy(BENCH / "davi.csv", tmp_path / "davi.csv")
    with pytest.raises(docs_bench.MissingBenchmarkError, match=r"benchmarks/linear\.csv"):
        docs_bench.choosing_page("choosing/amortised.md", bench_dir=tmp_path)
    with pytest.raises(docs_bench.MissingBenchmarkError):
        docs_bench.benchmark_pages(tmp_path)
    with pytest.raises(docs_bench.MissingBenchmarkError, match=r"_gallery\.md"):
        docs_bench.galleries_page(tmp_path)


def test_a_csv_without_the_bench_columns_is_a_clear_error(tmp_path):
    (tmp_path / "linear.csv").write_text("# Command: x\nmethod,task\nDPS,sr4\n")
    with pytest.raises(docs_bench.BenchmarkFormatError, match="no column column"):
        docs_bench.read_bench_table("linear", tmp_path)


# ------------------------------------------------------------------------------- galleries
def test_the_gallery_page_shows_every_committed_picture(bench_pages):
    files = docs_bench.site_files(BENCH)
    text = bench_pages[docs_bench.GALLERY_PAGE]
    captions = sorted(BENCH.glob("*_gallery.md"))
    assert captions
    for md in captions:
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text(encoding="utf-8"))
        assert links, md
        for link in links:
            assert files[f"galleries/{link}"] == BENCH / link
            assert f"](galleries/{link})" in text
    # every committed gallery picture is shown, and none is copied into docs/
    for png in BENCH.glob("*_gallery/*.png"):
        assert f"galleries/{png.relative_to(BENCH).as_posix()}" in files, png
    assert not list((ROOT / "docs").rglob("*.png"))


def test_a_missing_gallery_picture_is_a_clear_error(tmp_path):
    (tmp_path / "x_gallery.md").write_text("# X\n\n![a](x_gallery/a.png)\n")
    with pytest.raises(docs_bench.MissingBenchmarkError, match=r"x_gallery/a\.png"):
        docs_bench.site_files(tmp_path)


# -------------------------------------------------------------------------- bring your own
def _code_blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def test_bring_your_own_names_only_options_that_exist():
    from diffinv.solvers.base import _REGISTRY, _load_builtin

    _load_builtin()
    text = (ROOT / "docs" / "bring-your-own.md").read_text(encoding="utf-8")
    parsers = docs_gen.cli_commands()
    options = {name: {s for a in p._actions for s in a.option_strings}
               for name, p in parsers.items()}
    every = set().union(*options.values())
    # each command line of a bash block: its options are the sub-command's, -p keys the solver's
    checked = 0
    for block in _code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            m = re.match(r"\s*diffinv ([a-z-]+)(.*)", line)
            if not m:
                continue
            verb, rest = m.groups()
            assert verb in parsers, line
            for flag in re.findall(r"(?<!\S)(--?[a-z][a-z0-9-]*)", rest.split("#")[0]):
                assert flag in options[verb], f"`diffinv {verb}` has no option {flag}"
                checked += 1
            solver = re.search(r"--solver (\S+)", rest)
            for key in re.findall(r"-p (\w+)=", rest):
                assert solver and key in inspect.signature(_REGISTRY[solver.group(1)]).parameters, \
                    f"{line}: no solver parameter {key}"
    assert checked > 20
    # inline `diffinv VERB --option` spans, and every option named in prose
    for verb, rest in re.findall(r"`diffinv ([a-z-]+)((?: [^`]*)?)`", text):
        assert verb in parsers, verb
        for flag in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest):
            assert flag in options[verb], f"`diffinv {verb}` has no option {flag}"
    for line in text.splitlines():
        if "torchrun" in line or "pip install" in line:
            continue
        for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", line):
            assert flag in every, f"no sub-command has the option {flag}"


def test_bring_your_own_python_names_exist():
    from diffinv.diffusion.adm import ADM_PRESETS
    from diffinv.physics.registry import OPERATORS
    from diffinv.solvers.base import _REGISTRY, _load_builtin

    _load_builtin()
    text = (ROOT / "docs" / "bring-your-own.md").read_text(encoding="utf-8")
    blocks = _code_blocks(text, "python")
    assert blocks
    for block in blocks:
        for module, names in re.findall(r"^from (diffinv[\w.]*) import (.+)$", block,
                                        flags=re.MULTILINE):
            mod = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(mod, name), f"{module} has no {name}"
        for name in re.findall(r"make_solver\(\"([\w-]+)\"", block):
            assert name in _REGISTRY, name
        for name in re.findall(r"make_operator\(\"([\w-]+)\"", block):
            assert name in OPERATORS, name
    for preset in re.findall(r"`(adm-[\w-]+)`", text):
        assert preset in ADM_PRESETS, preset
    for name in re.findall(r"`(diffinv(?:\.\w+)+)`", text):  # dotted names in prose
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            break


# ----------------------------------------------------------------- figures of the result pages
PAPERS = sorted((ROOT / "docs" / "papers").glob("*.md"))
PAPER_FIGURES = ROOT / "docs" / "paper_figures.csv"


def _expand(markdown: str, page: str = "docs/papers/test.md") -> str:
    return docs_figures.expand_figures(markdown, page=page, bench_dir=BENCH,
                                       paper_figures=PAPER_FIGURES)


@pytest.mark.parametrize("page", PAPERS, ids=lambda p: p.name)
def test_every_placeholder_of_a_result_page_expands(page):
    """Every ``{{ ... }}`` of a page in docs/papers/ expands from the committed files, to a
    figure."""
    text = page.read_text(encoding="utf-8")
    found = list(docs_figures.PLACEHOLDER.finditer(text))
    assert len(found) > 10, f"{page.name} quotes no figure through a placeholder"
    for m in found:
        shown = _expand(m.group(0), page=f"docs/papers/{page.name}")
        assert re.search(r"\d", shown), f"{page.name}: {m.group(0)} renders {shown!r}"
    out = _expand(text, page=f"docs/papers/{page.name}")
    assert "{{" not in out and "}}" not in out


#: a number that a result page measured: a number beside ``±``; a decimal number (signed or not); a
#: number with a unit after it; a number after a metric's name (see the test's docstring)
_UNITS = (r"dB|s/\w+|s per \w+|s\b|MiB|GiB|GB|MB|min\b|minutes?\b|hours?\b|CPU-hours?|"
          r"images/s|FID points")
_FIGURE = re.compile(
    r"\d\s*±|±\s*\d"
    r"|(?<![\w.])[+\-−]?\d+\.\d+(?![\d.])"  # a decimal, not a version (0.5.0) nor s0.01
    rf"|(?<![\w.])[+\-−]?\d(?:[\d,]*\d)?(?:\.\d+)?\s*(?:{_UNITS})"
    r"|(?<![\w.])\d(?:[\d,]*\d)?(?:\.\d+)?x(?!\w)"  # 2,500x (not 9x9, not x4)
    r"|\b(?:PSNR|SSIM|ST-LPIPS|LPIPS|FID)\s*(?::|=|of|is)?\s*~?[+\-−]?\d")
#: a decimal right after one of these words is a setting, not a result; after a version
#: comparison (``torch >= 2.2``) a requirement
_SETTING = re.compile(r"(?:sigma|lambda|step|std from|lr|weight|>=|<=|==|~=)\s*$")


def hand_typed_figures(markdown: str) -> list[str]:
    """The figures typed by hand into a page: what :data:`_FIGURE` finds once the placeholders,
    fenced code blocks, code spans and link targets are removed, less the decimals that
    :data:`_SETTING` marks as settings."""
    text = docs_figures.strip_placeholders(markdown, mark="FIGURE")
    text = re.sub(r"^```.*?^```[^\n]*$", " ", text, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    out = []
    for m in _FIGURE.finditer(text):
        if re.fullmatch(r"[+\-−]?\d+\.\d+", m.group()) and _SETTING.search(text[:m.start()]):
            continue
        out.append(text[max(0, m.start() - 30):m.end() + 10].replace("\n", " "))
    return out


def test_the_figure_rule_tells_figures_from_settings():
    for figure in ("BlindDPS 24.2 ± 1.8 / 25.3 ± 1.6 dB", "± 0.5", "within ±0.9", "(37 s/image)",
                   "~485 s per image", "minus BlindDPS is -4.0", "SSIM 0.889", "FID 143", "0.128 against",
                   "68.9% of the time", "31 min on the shared CPU", "3 dB early", "2,500x faster",
                   "(3.7 s)", "and ~29 s;", "5.1 GB", "30.9 MiB", "cost 19 FID points", "~2 CPU-hours"):
        assert hand_typed_figures(figure), f"{figure!r} is a figure"
    for setting in ("fashion32 test images 0..29, 9x9 motion", "sigma 0.02", "SR x4 s0.01",
                    "2,000 iterations", "(W = 50, P = 300)", "issue 21", "30 test images",
                    "lr 1e-2", "deepinv 0.5.0", "the 95% interval", "200 x 5", "lambda 0.25",
                    "kernel step 0.01", "std from 0.3 px", "`-p window=0.5`", "in [-1, 1] units",
                    "32x32", "N = 30", "Table 5", "1,000 MoCo steps", "(any torch >= 2.2)",
                    "```python\nm = measure(x, op, \"gaussian:0.05\")\n```"):
        assert not hand_typed_figures(setting), f"{setting!r} is not a figure"


@pytest.mark.parametrize("page", PAPERS, ids=lambda p: p.name)
def test_no_result_page_types_a_figure_by_hand(page):
    """Every measured figure of a page in docs/papers/ is a placeholder, read from a committed
    file when the site is built. The rule, applied to the page's source with its placeholders,
    fenced code blocks, code spans and link targets removed: a figure is a number beside ``±``;
    any decimal number (signed or not: 24.2, -4.0, 0.889), except a version (0.5.0), a task label
    (s0.01) and a decimal right after a setting's name (sigma, lambda, step, std from, lr, weight)
    or a version comparison (torch >= 2.2); a number followed by a unit (dB, s/image, s per
    image, s, MiB, GB, min, hours, images/s, FID points); a number with ``x`` attached (2,500x
    faster; 9x9 and x4 are not); a number right after PSNR, SSIM, (ST-)LPIPS or FID. Integers
    without a unit are not figures: years, issue numbers, image counts and indices (30 test
    images, 0..29), step and iteration counts (2,000 iterations), sizes (9x9, 32x32), N = 30,
    table and equation numbers. The figures the papers report are ``{{ paper ID }}``
    placeholders too (``docs/paper_figures.csv``)."""
    text = page.read_text(encoding="utf-8")
    assert not hand_typed_figures(text), f"{page.name} types figures by hand: " \
        + "; ".join(hand_typed_figures(text))
    # the rule sees the figures the placeholders put there
    assert len(hand_typed_figures(_expand(text))) > 10


# ------------------------------------------------------------------------ claims at a glance
#: the pages that open with a table of their paper's claims (issue 40)
CLAIM_PAGES = ("dmplug.md", "cl-dps.md", "davi.md", "baselines.md")
CLAIMS_HEADER = "| Claim (paper, table) | Ours | Verdict | Evidence |"
VERDICTS = ("holds", "partly", "not reproduced", "not run")
#: a paired difference's 95% interval as ``show=interval`` prints it: ``+0.69 [+0.11, +1.26]``
_INTERVAL = re.compile(r"\[([+\-]?\d+(?:\.\d+)?), ([+\-]?\d+(?:\.\d+)?)\]")


def claims_rows(markdown: str) -> list[list[str]]:
    """The cells of each row of the table in a page's "## Claims at a glance" section (read from
    the expanded page: a placeholder's selectors may hold ``|``)."""
    m = re.search(r"^## Claims at a glance\n(.*?)(?=^## |\Z)", markdown,
                  flags=re.MULTILINE | re.DOTALL)
    assert m, "no '## Claims at a glance' section"
    lines = m.group(1).splitlines()
    assert CLAIMS_HEADER in lines, f"the claims table's header is not {CLAIMS_HEADER!r}"
    rows = []
    for line in lines[lines.index(CLAIMS_HEADER) + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def verdict_by_rule(ours: str) -> str | None:
    """The verdict the pages' rule gives to the intervals of an "Ours" cell (oriented so that the
    paper's side is above 0): **holds** if every interval is above 0, **not reproduced** if one is
    below 0 and none above, **partly** otherwise; None where the cell has no interval (a claim
    about a level)."""
    intervals = [(float(lo), float(hi)) for lo, hi in _INTERVAL.findall(ours)]
    if not intervals:
        return None
    above = [lo > 0 for lo, _ in intervals]
    below = [hi < 0 for _, hi in intervals]
    if all(above):
        return "holds"
    if not any(above) and any(below):
        return "not reproduced"
    return "partly"


def test_the_verdict_rule():
    assert verdict_by_rule("+0.69 [+0.11, +1.26]; +1.2 [+0.4, +1.9]") == "holds"
    assert verdict_by_rule("-0.87 [-1.46, -0.28]") == "not reproduced"
    assert verdict_by_rule("-1.17 [-1.83, -0.51]; +0.28 [-0.24, +0.80]") == "not reproduced"
    assert verdict_by_rule("+0.34 [-0.04, +0.71]") == "partly"
    assert verdict_by_rule("+0.69 [+0.11, +1.26]; +0.34 [-0.04, +0.71]") == "partly"
    assert verdict_by_rule("+1.5 [+1.0, +2.0]; -2.2 [-3.1, -1.3]") == "partly"
    assert verdict_by_rule("0.108 s per iteration; 160-170 s per image") is None


@pytest.mark.parametrize("name", CLAIM_PAGES)
def test_each_paper_page_opens_with_its_claims(name):
    """Each results page opens with "## Claims at a glance": a table whose rows give a claim, our
    figure, one of the four verdicts and the committed file with the command that made it."""
    text = (ROOT / "docs" / "papers" / name).read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", text, flags=re.MULTILINE)[0] == "Claims at a glance"
    rows = claims_rows(_expand(text, page=f"docs/papers/{name}"))
    assert len(rows) >= (2 if name == "baselines.md" else 5), name
    for claim, ours, verdict, evidence in rows:
        said = re.match(r"\*\*([a-z ]+)\*\*", verdict)
        assert said and said.group(1) in VERDICTS, f"{name}: {claim}: verdict {verdict!r}"
        if said.group(1) != "not run":
            assert re.search(r"\d", ours), f"{name}: {claim}: no figure of ours"
        if evidence == "as above":
            continue
        files = re.findall(r"`(benchmarks/[^`\s]+\.(?:md|csv|jsonl|json))`", evidence)
        assert files, f"{name}: {claim}: the evidence names no committed benchmark file"
        for path in files:
            assert list(ROOT.glob(path)), f"{name}: {claim}: {path} does not exist"
        commands = re.findall(r"`((?:OMP_NUM_THREADS=1 PYTHONPATH=src )?(?:diffinv bench|python) "
                              r"[^`]+)`", evidence)
        assert commands or "as above" in evidence or said.group(1) == "not run", \
            f"{name}: {claim}: no command"
        for command in commands:
            for script in re.findall(r"benchmarks/(?:tasks|tools)/[\w.-]+\.(?:toml|py)", command):
                assert (ROOT / script).is_file(), f"{name}: {claim}: {script} does not exist"
            for glob in re.findall(r"benchmarks/[\w.*-]+\.jsonl", command):
                assert list(ROOT.glob(glob)), f"{name}: {claim}: {glob} matches no file"


@pytest.mark.parametrize("name", CLAIM_PAGES)
def test_each_verdict_follows_the_rule_from_the_committed_figures(name):
    """The verdict of each claim with paired intervals is the one the rule gives to the intervals
    the committed files print when the page is built: a re-run that moves an interval across 0
    fails here until the verdict is revised."""
    text = (ROOT / "docs" / "papers" / name).read_text(encoding="utf-8")
    checked = 0
    for claim, ours, verdict, _ in claims_rows(_expand(text, page=f"docs/papers/{name}")):
        rule = verdict_by_rule(ours)
        if rule is None:
            continue
        assert verdict.startswith(f"**{rule}**"), (
            f"{name}: {claim}: the intervals {ours!r} make it **{rule}**, the page says {verdict!r}")
        checked += 1
    assert checked >= 2, name


def test_a_placeholder_naming_what_its_file_lacks_is_a_clear_error(tmp_path):
    page = "docs/papers/blind.md"
    with pytest.raises(docs_figures.FigureError,
                       match=r"docs/papers/blind\.md: \{\{ cell blind_linear method=BlindDPZ "
                             r".*no method 'BlindDPZ' \(its methods: .*'BlindDPS'.*`diffinv bench "
                             r"benchmarks/tasks/blind_linear\.toml`"):
        _expand('see {{ cell blind_linear method=BlindDPZ task="blind-motion s0.02" }} dB', page)
    with pytest.raises(docs_figures.FigureError, match=r"no task 'blind-motion'"):
        _expand("{{ cell blind_linear method=BlindDPS task=blind-motion }}", page)
    with pytest.raises(docs_figures.FigureError, match=r"no column 'psnrr'"):
        _expand('{{ cell blind_linear method=BlindDPS task="blind-motion s0.02" column=psnrr }}')
    with pytest.raises(docs_figures.FigureError,
                       match=r"\{\{ paired blind_linear\.part\*\.jsonl a=BlindDPZ .*no method "
                             r"'BlindDPZ'.*diffinv bench benchmarks/tasks/blind_linear\.toml"):
        _expand('{{ paired blind_linear.part*.jsonl a=BlindDPZ b=CL-DPS }}', page)
    with pytest.raises(docs_figures.FigureError, match=r"no row 'nope \| sr4'"):
        _expand('{{ table davi_speed row="nope | sr4" column="DAVI s/image" }}', page)
    with pytest.raises(docs_figures.FigureError, match=r"0 rows with id 'nope'"):
        _expand("{{ paper nope }}", page)
    with pytest.raises(docs_figures.FigureError, match=r"unknown kind 'cel'"):
        _expand("{{ cel blind_linear method=BlindDPS }}", page)
    with pytest.raises(docs_figures.FigureError, match=r"selects 2 values"):
        _expand('{{ cell blind_linear method=BlindDPS task="*" }}', page)
    # a missing file names the placeholder, the page and the command that writes it
    with pytest.raises(docs_bench.MissingBenchmarkError,
                       match=r"docs/papers/blind\.md: \{\{ cell nowhere .*benchmarks/nowhere\.csv "
                             r"does not exist"):
        _expand("{{ cell nowhere method=x }}", page)
    with pytest.raises(docs_bench.MissingBenchmarkError,
                       match=r"blind_linear\.csv does not exist\. It is written by `diffinv bench "
                             r"benchmarks/tasks/blind_linear\.toml"):
        bench = tmp_path / "benchmarks"  # the task files (they name the commands), no CSV
        shutil.copytree(BENCH / "tasks", bench / "tasks")
        docs_figures.expand_figures("{{ cell blind_linear method=BlindDPS }}", page=page,
                                    bench_dir=bench)


def test_the_hook_expands_the_figures_of_a_page():
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    config = SimpleNamespace(config_file_path=str(ROOT / "mkdocs.yml"))
    page = SimpleNamespace(file=SimpleNamespace(src_uri="papers/x.md"))
    out = hooks.on_page_markdown('BlindDPS {{ cell blind_linear method=BlindDPS '
                                 'task="blind-motion s0.02" }} dB', page, config, None)
    assert out == "BlindDPS 24.2 ± 1.8 dB"
    with pytest.raises(docs_figures.FigureError, match=r"docs/papers/x\.md"):
        hooks.on_page_markdown("{{ cell blind_linear method=nobody }}", page, config, None)


def test_a_paired_placeholder_equals_the_committed_paired_file():
    """``{{ paired ... }}`` computes from the JSONL rows what benchmarks/tools/paired_difference.py
    wrote into the committed file: every row of blind_linear_paired.md, to the digit."""
    rows = [line for line in (BENCH / "blind_linear_paired.md").read_text().splitlines()
            if line.startswith("| ") and "fashion32" in line]
    assert len(rows) == 16
    for line in rows:
        minus, cell, n, psnr, psnr_max, ssim, _ = [c.strip() for c in line.strip("|").split("|")]
        task = cell.split(", ", 1)[1]
        args = (f'blind_linear.part*.jsonl a="{minus}" b="DMPlug+ES-WMV (blind)" '
                f'task="{task}"')
        assert _expand(f"{{{{ paired {args} }}}}") == psnr
        assert _expand(f"{{{{ paired {args} show=maxabs }}}}") == psnr_max
        assert _expand(f"{{{{ paired {args} metric=ssim }}}}") == ssim
        # rounded for prose: the file's figure to one decimal
        centre, half = psnr.split(" ± ")
        shown = _expand(f"{{{{ paired {args} digits=1 }}}}")
        assert shown == f"{float(centre):+.1f} ± {float(half):.1f}" or (
            # the file's four decimals may end in 5: then the raw value decides
            centre[-1] == "5" or half[-1] == "5"), (shown, psnr)


def test_a_cell_placeholder_prints_as_the_table_does():
    """``{{ cell ... }}`` without digits= prints a figure exactly as ``diffinv bench`` printed it
    in the committed table (every PSNR, SSIM, NFE and s/image cell of blind_linear.md)."""
    seen = 0
    for line in (BENCH / "blind_linear.md").read_text().splitlines():
        if not line.startswith("| ") or " fashion32 " not in line:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        method, task = cells[0], cells[1]
        for column, shown in (("psnr", cells[3]), ("ssim", cells[4]), ("nfe", cells[7]),
                              ("seconds", cells[8])):
            got = _expand(f'{{{{ cell blind_linear method="{method}" task="{task}" '
                          f'column={column} }}}}')
            assert got == shown, (method, task, column)
            seen += 1
    assert seen >= 104  # 26 rows x 4 columns when written; rows are only ever added


# ------------------------------------------------------------------------------- the README
README = ROOT / docs_figures.README
README_TEMPLATE = ROOT / docs_figures.README_TEMPLATE


def test_the_readme_is_its_template_expanded():
    """README.md (shown on GitHub and PyPI: plain Markdown) is what docs/README.template.md
    expands to from the committed benchmark files, so a re-run benchmark that moves a README
    figure fails here until ``make readme`` rewrites it; and it stays short."""
    have = README.read_text(encoding="utf-8")
    want = docs_figures.render_readme(ROOT)
    assert have == want, ("README.md is stale: run `make readme` (python -m diffinv.docs_figures "
                          "--readme)\n" + "\n".join(docs_figures.readme_diff(ROOT)[:60]))
    assert "{{" not in have and "}}" not in have
    assert len(have.splitlines()) <= 150


def test_the_readme_template_types_no_figure_by_hand():
    """Every measured figure of the README is a placeholder of its template, by the rule of
    :func:`test_no_result_page_types_a_figure_by_hand`; every placeholder expands to a figure;
    and the template is not a page of the site."""
    text = README_TEMPLATE.read_text(encoding="utf-8")
    assert not hand_typed_figures(text), "docs/README.template.md types figures by hand: " \
        + "; ".join(hand_typed_figures(text))
    found = list(docs_figures.PLACEHOLDER.finditer(text))
    assert len(found) > 50
    for m in found:
        shown = _expand(m.group(0), page=docs_figures.README_TEMPLATE)
        assert re.search(r"\d", shown), f"{m.group(0)} renders {shown!r}"
    # the rule sees the figures the placeholders put there
    assert len(hand_typed_figures(README.read_text(encoding="utf-8"))) > 50
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    excluded = re.search(r"^exclude_docs: \|\n((?:  .+\n)+)", mkdocs, flags=re.MULTILINE)
    assert excluded and README_TEMPLATE.name in excluded.group(1).split()


def _readme_checkout(tmp_path: Path, readme: str) -> Path:
    """A repository root with this checkout's template and benchmark files and ``readme``."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "benchmarks").symlink_to(BENCH, target_is_directory=True)
    shutil.copy(README_TEMPLATE, root / docs_figures.README_TEMPLATE)
    shutil.copy(PAPER_FIGURES, root / docs_figures.PAPER_FIGURES)
    (root / "README.md").write_text(readme, encoding="utf-8")
    return root


def test_readme_check_finds_a_stale_figure_and_readme_rewrites_it(tmp_path, capsys):
    """``python -m diffinv.docs_figures --check`` exits 1 naming the line of a README figure that
    differs from the committed file; ``--readme`` rewrites the README (atomically) and ``--check``
    then passes."""
    good = README.read_text(encoding="utf-8")
    row = next(line for line in good.splitlines() if line.startswith("| DDRM | "))
    stale = good.replace(row, row.replace(" ± ", " ± 9", 1))  # one figure of the linear table
    assert stale != good
    root = _readme_checkout(tmp_path, stale)
    assert docs_figures.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "README.md is stale" in err and "make readme" in err
    assert f"+{row}" in err and "-| DDRM | " in err
    assert docs_figures.main(["--readme", "--root", str(root)]) == 0
    assert (root / "README.md").read_text(encoding="utf-8") == good
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
    assert docs_figures.main(["--check", "--root", str(root)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert docs_figures.write_readme(root) is False  # nothing to write
