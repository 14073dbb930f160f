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


def load_tensors_only(path: str | os.PathLike, map_location: str | object = "cpu") -> object:
    """``torch.load`` that runs no pickled code: tensors, numbers, strings, lists and dicts only.

    Anything else is refused with :class:`~diffinv.errors.IntegrityError` saying which object
    the file asked for and why it is refused (unpickling it could run arbitrary code); a file
    torch cannot read at all is reported as truncated or not a torch file. A missing file
    raises :class:`FileNotFoundError`.
    """
    import pickle
    import re
    import warnings

    import torch

    from diffinv.errors import IntegrityError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found.group(1)} object" if found else "pickled data"
        raise IntegrityError(f"{path} is refused: it holds {what}, not only tensors, and "
                             "unpickling it could run arbitrary code") from None
    except Exception as e:  # truncated zip archives, foreign bytes
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise IntegrityError(f"{path} is not a readable torch file (truncated or not a "
                             f"checkpoint: {reason})") from None
