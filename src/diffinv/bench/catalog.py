"""The job kinds a task file can name: the built-in ones and those its plugins register.

:mod:`diffinv.bench.jobs` is the registry and knows no kind; the built-in kinds
(:mod:`diffinv.bench.kinds`) register there when imported, which :func:`get_job_kind` and
:func:`job_kinds` do on first use. Modules named in ``[run] plugins`` are imported
(:func:`import_plugins`) before the lookup, so a task file can use kinds defined elsewhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import JobKind, registered_kinds
from diffinv.errors import UnknownNameError

_BUILTINS_LOADED = False


def load_builtin_kinds() -> None:
    """Import :mod:`diffinv.bench.kinds` (once), which registers the built-in kinds."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        importlib.import_module("diffinv.bench.kinds")
        _BUILTINS_LOADED = True


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules that register job kinds; a missing one is a clear error."""
    for mod in modules:
        if not isinstance(mod, str) or not mod.strip() or mod.startswith("."):
            raise BenchConfigError(f"plugin {mod!r}: expected an (absolute) module name")
        try:
            importlib.import_module(mod)
        except ImportError as e:  # not found, or it failed to import what it needs
            raise BenchConfigError(f"plugin module {mod!r} cannot be imported: {e}") from None


def get_job_kind(name: str) -> JobKind:
    """The kind registered as ``name``; :class:`~diffinv.errors.UnknownNameError` otherwise."""
    load_builtin_kinds()
    kinds = registered_kinds()
    if name not in kinds:
        raise UnknownNameError("job kind", name, list(kinds))
    return kinds[name]


def job_kinds() -> list[str]:
    """The names of every registered kind, built-in ones included, sorted."""
    load_builtin_kinds()
    return sorted(registered_kinds())
