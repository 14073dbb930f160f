"""Result rows on disk: one JSON object per line, appended, flushed and fsync'd one at a time.

A run named ``NAME`` writes into its output directory ``NAME.jsonl`` (one process) or
``NAME.part{k}of{m}.jsonl`` (worker ``k`` of ``m``: a ``--shard`` and/or a torchrun rank); the
report reads all of them. A process killed mid-write leaves at most one partial last line (no
trailing newline): readers skip it and the writer cuts it off before appending, so an interrupted
run loses nothing but the unit it was writing. A complete line that is not a JSON object is
corruption and raises :class:`~diffinv.bench.errors.BenchRecordError`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from diffinv.bench.errors import BenchRecordError

_PART = re.compile(r"\.part(\d+)of(\d+)\.jsonl$")


def record_path(out_dir: Path, name: str, worker: tuple[int, int]) -> Path:
    """The file worker ``(k, m)`` appends to."""
    k, m = worker
    return out_dir / (f"{name}.jsonl" if m == 1 else f"{name}.part{k}of{m}.jsonl")


def run_files(out_dir: Path, name: str) -> list[Path]:
    """Every results file of run ``name`` in ``out_dir`` (sorted), whoever wrote it."""
    if not out_dir.is_dir():
        return []
    files = []
    for p in out_dir.iterdir():
        if p.name == f"{name}.jsonl":
            files.append(p)
        elif p.name.startswith(f"{name}.part"):
            m = _PART.search(p.name)
            if m and p.name == f"{name}.part{m[1]}of{m[2]}.jsonl":
                files.append(p)
    return sorted(files)


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``path`` and the byte length of its complete lines (the rest is a partial
    last line, ignored)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict):
            raise BenchRecordError(f"{path}:{lineno}: not a JSON object; the file is corrupt "
                                   "(remove that line to go on)")
        rows.append(row)
    return rows, end


def read_run(out_dir: Path, name: str) -> list[dict[str, Any]]:
    """All rows of run ``name``, file by file."""
    rows: list[dict[str, Any]] = []
    for p in run_files(out_dir, name):
        rows.extend(read_records(p)[0])
    return rows


class RecordWriter:
    """Appends rows to one file, durably; holds an exclusive lock on it while open.

    On open, a partial last line left by a killed writer is truncated away (with a note on
    stderr). Each :meth:`write` appends one line, flushes and fsyncs before returning. A file (and
    the folders) that opening created are removed again on close when no row was written, so a
    run that fails before its first row leaves nothing behind.
    """

    def __init__(self, path: Path):
        self.path = path
        self._f: IO[bytes] | None = None
        self._made: list[Path] = []  # what opening created: the folders, then the file
        self._written = 0

    def __enter__(self) -> RecordWriter:
        missing = [p for p in reversed(self.path.parents) if not p.exists()]
        self._made = [*missing, *([] if self.path.exists() else [self.path])]
        self._written = 0
        f = _open_append(self.path)
        try:
            _lock(f, self.path)
            f.seek(0)
            _, end = read_records(self.path)
            size = f.seek(0, os.SEEK_END)
            if size > end:
                print(f"diffinv bench: dropping a partial last line ({size - end} bytes) of "
                      f"{self.path}", file=sys.stderr)
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            f.close()
            self._made = [p for p in self._made if p != self.path]  # another writer's file
            self._remove_made()
            raise
        self._f = f
        return self

    def write(self, row: dict[str, Any]) -> None:
        assert self._f is not None, "use RecordWriter as a context manager"
        line = json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=True) + "\n"
        self._f.write(line.encode())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._written += 1

    def write_all(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self.write(r)

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            if self._written == 0:  # removed while still locked: no other writer has it
                self._remove_made()
            self._f.close()
            self._f = None

    def _remove_made(self) -> None:
        """Remove what opening created, if it is still empty (file: no bytes; folder: no
        entries), deepest first."""
        for p in reversed(self._made):
            try:
                if p == self.path and p.is_file() and p.stat().st_size == 0:
                    p.unlink()
                elif p != self.path and p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
            except OSError:
                break
        self._made = []


def _open_append(path: Path) -> IO[bytes]:
    """``path`` opened for appending, its folder made first (again, should another worker's
    failed start remove that folder, still empty, in between)."""
    for _ in range(2):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return open(path, "a+b")  # noqa: SIM115 - the writer closes it
        except FileNotFoundError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+b")  # noqa: SIM115


def _lock(f: IO[bytes], path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise BenchRecordError(f"another process is writing {path}; give each process its own "
                               "--shard (or torchrun rank)") from None
