"""Output folders that lose nothing: claimed, built aside, and swapped in only when complete.

A command that writes a result folder (``diffinv solve``, ``diffinv measure``,
:func:`~diffinv.physics.save_measurement`) goes through three steps:

1. :func:`claim_output_folder` (called by :func:`diffinv.checks.check_output_folder`) before any
   work: the path must be a place diffinv may write. An existing non-empty folder needs
   ``overwrite``, and even then it is replaced only if diffinv wrote it: it carries the marker
   file :data:`MARKER`, whose manifest lists every file in it, and it holds nothing else. The
   working folder, any folder that holds it, the home folder, a symbolic link, a command's own
   input (or a folder holding an input) and a folder the user cannot write are never replaced. The
   claim takes an exclusive lock (an ``flock`` on a per-user lock file outside the user's folders,
   keyed by the resolved path), so a second process writing the same output is refused at once
   instead of silently replacing the first one's result.
2. :func:`atomic_folder`: the files are written into a temporary sibling folder.
3. When the block succeeds the manifest is written and the new folder takes the old one's place by
   renames only: the old folder is first moved aside (``.NAME.old-*``), the new one renamed into
   place, and only then is the old one deleted. A failure or a refusal at any point leaves the old
   folder where it was, and the temporary one is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from diffinv.errors import DiffinvError

#: the manifest diffinv leaves in every result folder it writes (and requires before replacing one)
MARKER = ".diffinv-output.json"
#: how many foreign files a refusal names
_LISTED = 5
#: locks this process holds, by resolved output path (a claim is re-entrant within a process)
_HELD: dict[Path, int] = {}


def _lock_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"diffinv-locks-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _lock_file(resolved: Path) -> Path:
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:32]
    return _lock_dir() / f"{key}.lock"


def _acquire(resolved: Path, shown: Path) -> None:
    """Take the exclusive lock on output ``resolved`` or refuse: another process writes it."""
    if resolved in _HELD:
        return
    path = _lock_file(resolved)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DiffinvError(f"another diffinv process (pid {holder}) is writing {shown}; wait "
                               "for it to finish or choose another output folder") from None
        # the holder before us may have unlinked the file between our open and our lock
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[resolved] = fd


def release_output_folder(path: str | os.PathLike) -> None:
    """Give up this process's claim on output ``path`` (no-op without one)."""
    resolved = Path(path).resolve()
    fd = _HELD.pop(resolved, None)
    if fd is None:
        return
    try:
        _lock_file(resolved).unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _manifest(folder: Path) -> set[str] | None:
    """The files the marker of ``folder`` lists, or None when it has no readable marker."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def _contents(folder: Path) -> list[str]:
    """Every entry under ``folder`` (files, links and folders) as relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _refuse_protected(out: Path, resolved: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Places diffinv never replaces, whatever ``overwrite`` says."""
    cwd = Path.cwd().resolve()
    if _is_within(cwd, resolved):
        what = "the working folder" if resolved == cwd else "a folder that holds the working folder"
        raise DiffinvError(f"refusing to replace {out}: it is {what}; name a new output folder "
                           "such as out/")
    home = Path.home().resolve()
    if resolved == home:
        raise DiffinvError(f"refusing to replace {out}: it is the home folder")
    for given in inputs:
        src = Path(given).resolve()
        if _is_within(src, resolved):
            what = "this command's input" if src == resolved else f"this command's input {given}"
            raise DiffinvError(f"refusing to write {out}: it is or holds {what}; write the "
                               "result to another folder")


def _refuse_foreign(out: Path) -> None:
    """``out`` is an existing non-empty folder: refuse unless diffinv wrote all of it."""
    listed = _manifest(out)
    if listed is None:
        raise DiffinvError(f"refusing to replace {out}: diffinv did not write it (no {MARKER} "
                           "manifest in it); choose another output folder or remove it yourself")
    foreign = [f for f in _contents(out) if f != MARKER and f not in listed
               and not any(g.startswith(f + "/") for g in listed)]
    if foreign:
        shown = ", ".join(foreign[:_LISTED]) + (", ..." if len(foreign) > _LISTED else "")
        raise DiffinvError(f"refusing to replace {out}: it holds {len(foreign)} file(s) diffinv "
                           f"did not write ({shown}); move them or choose another output folder")


def check_replaceable(out: Path, *, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()
                      ) -> None:
    """Refuse (:class:`DiffinvError`) an output folder ``out`` that must not be (re)placed.

    Refused: a symbolic link; the working folder, a folder holding it, or the home folder;
    ``inputs`` or a folder holding one of them; an existing folder the user cannot write; an
    existing non-empty folder without ``overwrite``, or with it but not written by diffinv (see
    the module docstring).
    """
    inputs = list(inputs)
    if out.is_symlink():
        raise DiffinvError(f"refusing to write {out}: it is a symbolic link; name the folder itself")
    resolved = out.resolve()
    _refuse_protected(out, resolved, inputs)
    if not out.is_dir():
        return
    mode = out.stat().st_mode
    if not os.access(out, os.W_OK | os.X_OK) or not mode & stat.S_IWUSR:
        raise DiffinvError(f"cannot write {out}: the folder is read-only (mode "
                           f"{mode & 0o777:o}); diffinv does not replace it")
    if any(out.iterdir()):
        if not overwrite:
            raise DiffinvError(f"{out} exists and is not empty (--overwrite / overwrite=True "
                               "replaces a folder that diffinv wrote, nothing else)")
        _refuse_foreign(out)


def claim_output_folder(out: Path, *, overwrite: bool,
                        inputs: Iterable[str | os.PathLike] = ()) -> None:
    """:func:`check_replaceable`, then this process's exclusive claim on ``out`` (re-entrant)."""
    check_replaceable(out, overwrite=overwrite, inputs=inputs)
    _acquire(out.resolve(), out)


def _write_manifest(folder: Path) -> None:
    from diffinv import __version__

    files = [f for f in _contents(folder) if (folder / f).is_file()]
    record = {"written_by": f"diffinv {__version__}", "files": files}
    (folder / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def _default_permissions(folder: Path, mode: int | None = None) -> None:
    """``mkdtemp`` makes a private folder: give it (and its files) the usual umask modes, or the
    mode of the folder it replaces."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(mode if mode is not None else 0o777 & ~mask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the complete folder ``tmp`` at ``out`` by renames; the old ``out`` survives any error."""
    if not out.exists():
        try:
            os.rename(tmp, out)
        except OSError as e:
            raise DiffinvError(f"cannot write {out}: {e.strerror or e} (did something else create "
                               "it meanwhile?)") from None
        return
    mode = out.stat().st_mode & 0o7777
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old)  # onto the empty folder mkdtemp made
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    out.chmod(mode)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(out: str | os.PathLike, *, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it takes ``out``'s place at once.

    ``out`` is checked and claimed as :func:`claim_output_folder` does (a no-op for the claim when
    the command already holds it), and checked again just before the swap, in case the folder
    changed while the command worked. On any error the temporary folder is removed and ``out`` is
    left as it was, so a failed command writes nothing; the claim is released either way.
    """
    from diffinv.checks import check_output_folder

    inputs = list(inputs)
    out = check_output_folder(out, overwrite=overwrite, inputs=inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            yield tmp
            check_replaceable(out, overwrite=overwrite, inputs=inputs)
            _write_manifest(tmp)
            _default_permissions(tmp)
            _swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        release_output_folder(out)


def load_tensors_only(path: str | os.PathLike, map_location: str | object = "cpu") -> object:
    """``torch.load`` that runs no pickled code: tensors, numbers, strings, lists and dicts only.

    Anything else is refused with :class:`~diffinv.errors.IntegrityError` saying which object
    the file asked for (found by scanning, never running, its pickle) and why it is refused
    (unpickling it could run arbitrary code); a file that is neither a torch zip archive nor a
    pickle (random bytes, another format) is reported as not a readable torch file, not as
    pickled code. A missing file raises :class:`FileNotFoundError`.
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
        kind, name = _pickle_kind(Path(path))
        name = found.group(1) if found else name
        if kind == "foreign":
            raise IntegrityError(f"{path} is not a readable torch file: {_FOREIGN}") from None
        if name:
            raise IntegrityError(f"{path} is refused: it holds a pickled {name} object, not only "
                                 "tensors, and unpickling it could run arbitrary code") from None
        reason = next((ln.strip() for ln in reversed(str(e).splitlines())
                       if ln.strip() and "documentation" not in ln), type(e).__name__)[:120]
        raise IntegrityError(f"{path} is refused: it holds pickled data that torch's "
                             f"tensors-only loader cannot read ({reason}); diffinv unpickles "
                             "nothing else") from None
    except Exception as e:  # truncated zip archives, foreign bytes
        if _pickle_kind(Path(path))[0] == "foreign":
            raise IntegrityError(f"{path} is not a readable torch file: {_FOREIGN}") from None
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise IntegrityError(f"{path} is not a readable torch file (truncated or not a "
                             f"checkpoint: {reason})") from None


_FOREIGN = "it is neither a torch zip archive nor a pickle (truncated, or another format)"
#: globals a torch checkpoint's pickle names that torch's tensors-only loader accepts
_TORCH_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode",
                          "numpy.core.multiarray._reconstruct")


def _pickle_kind(path: Path) -> tuple[str, str | None]:
    """What ``path`` is, read without unpickling anything: ``("zip" | "pickle" | "foreign",
    the first global its pickle asks for that is not torch's own, or None)``."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return "foreign", None
                with z.open(member) as f:
                    return "zip", _first_foreign_global(f, 1)
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":  # every pickle of protocol 2 or more starts with PROTO
                return "foreign", None
            f.seek(0)
            return "pickle", _first_foreign_global(f, 4)  # torch's legacy format: 4 pickles
    except ValueError:  # not a valid pickle stream
        return "foreign", None
    except (OSError, zipfile.BadZipFile):
        return "foreign", None


def _first_foreign_global(f, pickles: int) -> str | None:
    """Scan (never run) up to ``pickles`` consecutive pickles of file ``f`` for the globals they
    ask for; the first that is not torch's own, as ``module.name``."""
    import pickletools

    for i in range(pickles):
        memo: dict[int, object] = {}
        pushed: list[object] = []  # what each push put on the stack: a string, or None
        try:
            for op, arg, _pos in pickletools.genops(f):
                name = None
                if op.name == "GLOBAL":
                    name = str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL":
                    if len(pushed) >= 2 and all(isinstance(v, str) for v in pushed[-2:]):
                        name = f"{pushed[-2]}.{pushed[-1]}"
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                                 "SHORT_BINSTRING", "BINSTRING", "STRING"):
                    pushed.append(arg)
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    pushed.append(memo.get(int(arg)))
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.stack_after:
                    pushed.append(None)
                if name and not name.startswith(_TORCH_GLOBAL_PREFIXES):
                    return name
        except ValueError:  # not a pickle (the first), or no further pickle (the others)
            if i == 0:
                raise
            return None
    return None
