"""``diffinv bench --help`` / ``--explain-format``: the task-file format, derived from the code.

Every job kind, every ``[run]`` key the loader accepts for it (read from the loader's own refusal
of an unknown key, which lists what it knows), every grid axis and the keys of the axis tables
the built-in kinds interpret appear in the printed text; a kind registered later appears with its
options and defaults.
"""

from __future__ import annotations

import ast
import re

import pytest

from diffinv.bench import BenchConfigError, register_job_kind, unregister_job_kind
from diffinv.bench.catalog import get_job_kind, job_kinds
from diffinv.bench.jobs import REQUIRED
from diffinv.bench.kinds import common
from diffinv.bench.plan import COMMON_KEY_HELP, COMMON_KEYS, load_plan
from diffinv.bench.taskformat import task_file_format
from diffinv.cli import build_parser, main


def _explained(capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--explain-format"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _blocks(text: str) -> dict[str, str]:
    """kind name -> its block of the text."""
    parts = re.split(r'^kind = "([^"]+)":? ?', text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _listed(block: str, key: str) -> bool:
    """``key`` starts a line of ``block`` (``key = default``, ``key (required)``, ``key``)."""
    return re.search(rf"^  {re.escape(key)}( = | \(required\)| +\S|$)", block, flags=re.M) is not None


def _accepted_run_keys(tmp_path, kind: str) -> list[str]:
    """The ``[run]`` keys the loader accepts for ``kind``: its error for an unknown key lists them."""
    path = tmp_path / f"{kind}.toml"
    path.write_text(f'[run]\nkind = "{kind}"\nzz_not_a_key = 1\n')
    with pytest.raises(BenchConfigError, match="unknown \\[run\\] key") as e:
        load_plan(path)
    known = ast.literal_eval(str(e.value).split("known: ", 1)[1])
    assert "zz_not_a_key" not in known and "kind" in known
    return known


def test_explain_format_prints_what_help_prints(capsys):
    text = _explained(capsys)
    assert text == task_file_format()
    bench = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                 if a[0] == "bench")[1]
    assert text.strip() in bench.format_help()
    assert text.startswith("task file format") and "[[cell]]" in text and "[grid]" in text


def test_every_kind_and_every_key_the_loader_accepts_is_explained(capsys, tmp_path):
    text = _explained(capsys)
    blocks = _blocks(text)
    assert sorted(blocks) == job_kinds()
    assert next(iter(blocks)) == COMMON_KEYS["kind"]  # the default kind comes first
    head = re.split(r'^kind = "', text.split("[run] keys of every job kind:", 1)[1], flags=re.M)[0]
    assert set(COMMON_KEY_HELP) == set(COMMON_KEYS)
    for key in COMMON_KEYS:
        assert _listed(head, key), key
    for name in job_kinds():
        kind, block = get_job_kind(name), blocks[name]
        for key in _accepted_run_keys(tmp_path, name):
            assert _listed(head if key in COMMON_KEYS else block, key), (name, key)
        for key in kind.options:
            assert _listed(block, key), (name, key)
        assert _listed(block, kind.target_key) and _listed(block, "metrics"), name
        for axis in kind.axes:  # the list key and the one-value key of a [[cell]] block
            assert f"\n  {axis.key} / {axis.name} " in block, (name, axis)
        for key, default in kind.options.items():
            shown = f"{key} (required)" if default is REQUIRED else f"{key} = "
            assert shown in block, (name, key)
        assert " ".join(kind.description.split()) in " ".join(block.split())


def test_the_axis_table_keys_the_kinds_read_are_explained(capsys):
    blocks = _blocks(_explained(capsys))
    for name in ("restore", "dmplug-cost", "overhead"):
        for key in common.TASK_KEYS + common.PRIOR_KEYS:
            assert re.search(rf"\b{key}\b", blocks[name]), (name, key)
    for key in (common.TRUE_OPERATOR, common.PRESET, "oracle", "trace:KEY", "kernel-mse"):
        assert key in blocks["restore"], key
    assert "path" in blocks["prior-quality"] and '"ddim"' in blocks["prior-quality"]
    assert '"forward+backward"' in blocks["network-speed"]


def test_a_kind_registered_later_is_explained_with_its_options():
    def run(ctx, cell, indices):  # never called
        raise AssertionError

    register_job_kind("toy-format", run, axes=["widget"], options={"knob": 3, "must": REQUIRED},
                      target_key="trials", default_target=4, statistic="median",
                      identity=("knob",), metrics=("score",),
                      help={"widget": "a widget name", "knob": "how far to turn it"})
    try:
        block = _blocks(task_file_format())["toy-format"]
    finally:
        unregister_job_kind("toy-format")
    assert "widgets / widget" in block and "a widget name" in block
    assert "trials = 4" in block and "knob = 3" in block and "how far to turn it" in block
    assert "\n  must (required)\n" in block and '["score"]' in block
    assert "median" in block and "reused only under the same knob" in " ".join(block.split())


def test_help_for_a_key_the_kind_does_not_have_is_refused():
    with pytest.raises(BenchConfigError, match="help for \\['knbo'\\]"):
        register_job_kind("toy-typo", lambda *a: [], options={"knob": 1}, help={"knbo": "typo"})
    assert "toy-typo" not in job_kinds()


def test_building_the_cli_imports_no_job_kind():
    import subprocess
    import sys

    code = ("import sys; from diffinv.cli import build_parser; build_parser(); "
            "print(any(m.startswith('diffinv.bench.kinds') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
