"""MkDocs hook: adds the pages that :mod:`diffinv.docs_gen` and :mod:`diffinv.docs_bench` write
at build time, and fills in the figures of the hand-written pages (:mod:`diffinv.docs_figures`).

* the reference pages, from the registries (solvers, operators, noise models, sub-commands, job
  kinds);
* the "choosing a solver" pages and the galleries, from the benchmark tables and pictures
  committed in ``benchmarks/`` (the gallery PNGs are added to the site from there);
* every figure of the hand-written pages (``docs/papers/``): each is a placeholder
  ``{{ KIND ARGS }}`` that :func:`diffinv.docs_figures.expand_figures` replaces with the value read
  from the committed CSV, JSONL or table it names (``on_page_markdown``); the figures the papers
  report come from ``docs/paper_figures.csv``.

Nothing is written into ``docs/``: the pages exist only in the built site, so they cannot go
stale, a new solver, operator, noise model, sub-command or job kind needs no docs edit, and a
re-run benchmark table updates its page. A benchmark file that a page needs and that is missing,
or a placeholder naming a method, task or column its file lacks, stops the build with an error
naming it (with the page and the command that writes the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mkdocs is imported where a hook runs, so the tests load this file without it
    from mkdocs.structure.files import File, Files


def _add(files: Files, file: File) -> None:
    existing = files.get_file_from_path(file.src_uri)
    if existing is not None:
        files.remove(existing)
    files.append(file)


def on_files(files: Files, config) -> Files:
    from mkdocs.structure.files import File

    from diffinv.docs_bench import benchmark_pages, site_files
    from diffinv.docs_gen import reference_pages

    bench_dir = Path(config.config_file_path).resolve().parent / "benchmarks"
    pages = {**reference_pages(), **benchmark_pages(bench_dir)}
    for path, markdown in pages.items():
        _add(files, File.generated(config, path, content=markdown))
    for path, source in site_files(bench_dir).items():
        _add(files, File.generated(config, path, abs_src_path=str(source)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    from diffinv.docs_figures import expand_figures

    root = Path(config.config_file_path).resolve().parent
    return expand_figures(markdown, page=f"docs/{page.file.src_uri}", bench_dir=root / "benchmarks",
                          paper_figures=root / "docs" / "paper_figures.csv")
