"""The docs site's reference pages (``diffinv.docs_gen``) cover every registered solver, operator,
noise model, CLI sub-command and bench job kind. The generators are called directly: no mkdocs
build here (``make docs`` builds the site)."""

from __future__ import annotations

import re

import pytest

from diffinv import docs_gen


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
