"""The task-file format as ``diffinv bench --help`` (and ``--explain-format``) prints it.

An annotated example (:data:`diffinv.bench.spec.TASK_FILE_FORMAT`), then what is derived from the
code, so that it cannot drift from what the loader accepts: the ``[run]`` keys of every kind
(:data:`diffinv.bench.plan.COMMON_KEYS` with :data:`~diffinv.bench.plan.COMMON_KEY_HELP`), and,
for each registered job kind (:mod:`diffinv.bench.catalog`: the built-in ones and any a plugin
registered before the call), its grid axes, its target key, its own ``[run]`` options with their
defaults (or "required"), its default metrics, the statistic of its tables and the options that
identify a row, with the one-line ``help`` the kind registers.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from diffinv.bench.catalog import get_job_kind, job_kinds
from diffinv.bench.jobs import REQUIRED, JobKind
from diffinv.bench.plan import COMMON_KEY_HELP, COMMON_KEYS
from diffinv.bench.spec import TASK_FILE_FORMAT

WIDTH = 100
INTERVALS = {"mean": "mean with a 95% t interval", "median": "median with a 95% order-statistic "
             "interval"}


def _value(v: Any) -> str:
    """A default as it is written in TOML."""
    return json.dumps(v)


def _item(key: str, text: str, indent: int = 2, column: int = 24) -> str:
    """``key`` then ``text`` wrapped at :data:`WIDTH`, continuation lines under the text."""
    head = " " * indent + key
    pad = " " * column
    if not text:
        return head
    if len(head) >= column - 1:  # a long key: the text starts on the next line
        return head + "\n" + textwrap.fill(text, WIDTH, initial_indent=pad, subsequent_indent=pad)
    return textwrap.fill(text, WIDTH, initial_indent=head.ljust(column), subsequent_indent=pad)


def _common_keys() -> str:
    lines = ["[run] keys of every job kind:"]
    for key, default in COMMON_KEYS.items():
        shown = key if default is None else f"{key} = {_value(default)}"
        lines.append(_item(shown, COMMON_KEY_HELP.get(key, "")))
    lines.append("  plus the kind's target key and its own options (below); a key the kind does "
                 "not know")
    lines.append("  is refused as a typo.")
    return "\n".join(lines)


def describe_kind(kind: JobKind) -> str:
    """The block of one job kind: axes, target, options, metrics, statistic, identity."""
    help_ = kind.help
    title = f'kind = "{kind.name}"' + (f": {kind.description}" if kind.description else "")
    lines = [textwrap.fill(title, WIDTH, subsequent_indent="  ")]
    for axis in kind.axes:
        lines.append(_item(f"{axis.key} / {axis.name}",
                           help_.get(axis.name, "") or f"a value of the {axis.name} axis"))
    target = (f"{kind.target_key} (required)" if kind.default_target is None
              else f"{kind.target_key} = {kind.default_target}")
    lines.append(_item(target, help_.get(kind.target_key)
                       or f"{kind.replicate}s per cell (a [[cell]] may set its own)"))
    for key, default in kind.options.items():
        shown = f"{key} (required)" if default is REQUIRED else f"{key} = {_value(default)}"
        lines.append(_item(shown, help_.get(key, "")))
    if kind.metrics is None:
        lines.append(_item("metrics (required)", help_.get("metrics", "the columns")))
    else:
        lines.append(_item("metrics", " ".join(filter(None, [
            help_.get("metrics", ""), f"default: {_value(list(kind.metrics))}"]))))
    table = f"tables: {INTERVALS[kind.statistic]} over {kind.replicate}s"
    if kind.identity:
        table += f"; a row is reused only under the same {', '.join(kind.identity)}"
    lines.append(textwrap.fill(table, WIDTH, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(lines)


KINDS_HEADER = (
    "job kinds, by [run] kind: each grid axis as LIST / ONE, LIST being its list at the top of "
    "the file (or in a [grid] table) or in a [[cell]] block, ONE a single value in a [[cell]] "
    "block; then the kind's target count (per cell; a [[cell]] block may set its own), its own "
    "[run] options (= default) and its metrics:")


def task_file_format(kinds: list[str] | None = None) -> str:
    """The whole text: the example, the common ``[run]`` keys, then each of ``kinds`` (default:
    every registered kind, the default kind first)."""
    if kinds is None:
        default = COMMON_KEYS["kind"]
        kinds = sorted(job_kinds(), key=lambda n: (n != default, n))
    parts = [TASK_FILE_FORMAT, _common_keys(), textwrap.fill(KINDS_HEADER, WIDTH)]
    parts += [describe_kind(get_job_kind(n)) for n in kinds]
    return "\n\n".join(parts) + "\n"
