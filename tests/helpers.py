"""Helpers of the command-line safety tests (``test_bad_input``, ``test_input_safety``,
``test_bench_safety``): what a refused command line must look like, and what it left behind.
The ``unwritable`` folder fixture they share is in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

from diffinv.cli import main


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (hidden ones too), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(argv: list, capsys) -> str:
    """Run the command line (its arguments as strings), assert exit code 1 and a ``diffinv ...``
    message without a traceback; return stderr."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and err.startswith("diffinv "), err
    return err
