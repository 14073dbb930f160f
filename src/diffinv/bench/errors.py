"""Errors of the benchmark runner (all :class:`~diffinv.errors.DiffinvError` subclasses)."""

from __future__ import annotations

from diffinv.errors import DiffinvError


class BenchConfigError(DiffinvError, ValueError):
    """A task file, a ``--shard`` spec or a job kind's options are malformed."""


class BenchRecordError(DiffinvError):
    """A results file cannot be used: a corrupt line, or another process is writing it."""
