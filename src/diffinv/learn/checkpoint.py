"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)`` only.

A checkpoint is a dict of tensors, numbers and strings (the config as JSON). Writes go to a
temporary file in the same folder, fsync'd, then renamed over the old file, so a run killed
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from diffinv.checks import check_output_file, check_output_folder
from diffinv.errors import DiffinvError, IntegrityError
from diffinv.fileio import load_tensors_only


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; corrupt, truncated or foreign files raise IntegrityError."""
    path = Path(path)
    obj = load_tensors_only(path, map_location)
    if not isinstance(obj, dict):
        raise IntegrityError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    return obj


def check_export_name(name: str, what: str = "export name") -> str:
    """``name`` if it is a bare file name that stays in its export folder: not empty, no path
    separator (``/`` or ``\\``), not ``.``/``..`` and not hidden (a leading dot)."""
    if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise DiffinvError(f"{what} {name!r} must be a plain file name: not empty, without '/' "
                           "or '\\' and not starting with '.' (the file is written into the "
                           "export folder)")
    return name


def check_export(folder: str | Path, name: str, *, overwrite: bool = False) -> Path:
    """Check, before any work, that ``folder/NAME.safetensors`` and ``folder/NAME.json`` can be
    written (``name``: :func:`check_export_name`; existing files only with ``overwrite``);
    returns the folder. Creates nothing."""
    check_export_name(name)
    out = check_output_folder(folder, replace=False)
    for suffix in (".safetensors", ".json"):
        check_output_file(out / f"{name}{suffix}", overwrite=overwrite)
    return out
