"""All-or-nothing output folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_permissions(folder: Path) -> None:
    """``mkdtemp`` makes a private folder: give it (and its files) the usual umask modes."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it replaces ``out`` at once.

    On any error the temporary folder is removed and ``out`` is left as it was, so a failed
    command writes nothing. A command checks ``out`` before its work
    (:func:`~diffinv.checks.check_output_folder`); the check is repeated here for other callers.
    """
    from diffinv.checks import check_output_folder

    out = check_output_folder(out, overwrite=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
