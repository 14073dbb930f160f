"""Input validation shared by every public entry point."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from diffinv.errors import DiffinvError, NonFiniteError, RangeWarning, ShapeError


def check_image(
    x: torch.Tensor,
    name: str = "x",
    *,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a (B, C, H, W) float tensor, optionally of given channels/size, finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ShapeError(f"{name} must have shape (B, C, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(f"{name} has {x.shape[1]} channels; expected {channels}")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != hw:
            raise ShapeError(f"{name} is {x.shape[-2]}x{x.shape[-1]}; expected {hw[0]}x{hw[1]}")
    if finite and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise NonFiniteError(f"{name} contains {bad} NaN/Inf values")
    return x


# ------------------------------------------------------------------------ numbers and devices
def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; bools, floats (even 3.0) and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DiffinvError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


#: the device types diffinv runs on (``meta`` holds no data; ``xla``, ``ipu``... are not supported)
RUNNABLE_DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(device: str | torch.device, where: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` that this machine has, before anything runs on it.

    A string that is not a torch device, a device type other than cpu, cuda and mps
    (:data:`RUNNABLE_DEVICE_TYPES`), and a CUDA device on a machine (or a torch build) without
    CUDA or without that many GPUs, raise :class:`DiffinvError` naming ``where`` it came from.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise DiffinvError(f"{where} {str(device)!r} is not a torch device: {e}") from None
    if dev.type not in RUNNABLE_DEVICE_TYPES:
        raise DiffinvError(f"{where} {str(device)!r}: diffinv runs on cpu, cuda or mps devices, "
                           f"not {dev.type!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DiffinvError(f"{where} {str(device)!r}: this torch ({torch.__version__}) sees no "
                               "CUDA device; use the CPU (--device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DiffinvError(f"{where} {str(device)!r}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DiffinvError(f"{where} {str(device)!r}: this torch sees no MPS device; use cpu")
    return dev


# --------------------------------------------------------------------------- the [-1, 1] range
#: how far a truth image may stray outside [-1, 1] (resampling overshoot) before it is refused
IMAGE_RANGE_SLACK = 0.05
#: a batch with no value below 0 that reaches above this looks like [0, 1] images (a [0, 1] image
#: spans about 0..1; a mid-tone [-1, 1] image, e.g. a toy prior's sample, stays below it)
UNIT_RANGE_HINT = 0.75
#: a measurement of images in [-1, 1] averages within [-1, 1] whatever its (zero-mean or
#: unbiased) noise; an image of y whose mean lies beyond +-this was made from other units
MEASUREMENT_MEAN_LIMIT = 1.5
RESCALE_HINT = "rescale [0, 255] images with x / 127.5 - 1 and [0, 1] images with 2 * x - 1"


def check_image_range(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Check the [-1, 1] image contract of a truth image ``x`` (B, C, H, W).

    Values beyond [-1, 1] by more than :data:`IMAGE_RANGE_SLACK` raise :class:`DiffinvError`;
    a batch with no value below 0 that reaches above :data:`UNIT_RANGE_HINT` warns
    (:class:`~diffinv.errors.RangeWarning`): it is most likely in [0, 1] (a bright [-1, 1] image
    with no dark half is possible, hence no error).
    """
    lo, hi = float(x.detach().amin()), float(x.detach().amax())
    if lo < -1 - IMAGE_RANGE_SLACK or hi > 1 + IMAGE_RANGE_SLACK:
        raise DiffinvError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; diffinv images are in "
                           f"[-1, 1]: {RESCALE_HINT}")
    if lo >= 0 and hi > UNIT_RANGE_HINT:
        warnings.warn(f"{name} has no value below 0 (range [{lo:.4g}, {hi:.4g}]): diffinv images "
                      f"are in [-1, 1], so this looks like a [0, 1] image; {RESCALE_HINT} "
                      "(ignore this if it is a bright [-1, 1] image)", RangeWarning, stacklevel=3)
    return x


def check_measurement_range(y: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Refuse an image-like measurement ``y`` whose per-image mean shows it was not made from
    [-1, 1] images (e.g. from [0, 255] ones).

    Only the mean is checked: noise (Poisson at a low rate, impulses) may push single values of
    a correct measurement far beyond [-1, 1], but not its mean. A measurement of [0, 1] images
    cannot be told apart from one of bright [-1, 1] images and passes (:func:`measure` warns).
    """
    means = y.detach().flatten(1).float().mean(1)
    bad = (means.abs() > MEASUREMENT_MEAN_LIMIT).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise DiffinvError(
            f"{name} (image {i} of the batch) has mean {float(means[i]):.4g}, but a measurement of "
            "images in [-1, 1] has its mean in [-1, 1] whatever its noise: was it made from "
            f"[0, 255] or otherwise scaled images? Measure images in [-1, 1] ({RESCALE_HINT})")
    return y


# ----------------------------------------------------------------------------- output locations
def _first_non_folder(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (so nothing can go under it)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, target: Path) -> None:
    """Create and remove a probe file in ``folder``, the nearest existing folder of ``target``."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DiffinvError(f"cannot create {target}: {folder} is not writable "
                           f"({e.strerror or e})") from None


def check_output_folder(path: str | os.PathLike, *, overwrite: bool = False,
                        replace: bool = True, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check, before any work, that output folder ``path`` can be written; returns it as a Path.

    ``replace=True``: the folder is written aside and renamed into place
    (:func:`~diffinv.fileio.atomic_folder`). It must be a place diffinv may (re)place: an
    existing non-empty folder needs ``overwrite`` and is replaced only if diffinv wrote all of it;
    the working folder, folders holding it, ``inputs`` and folders holding them are never
    replaced; and this process claims the path, so a second process writing it is refused (see
    :mod:`diffinv.fileio`). ``replace=False``: files are written into the folder (a run folder
    that resumes, the demo). A path that is a file, lies under a file or cannot be created raises
    :class:`DiffinvError`. Creates no file or folder at ``path``.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        hint = " (--overwrite replaces a folder, never a file)" if overwrite else ""
        raise DiffinvError(f"output folder {out} is a file, not a folder{hint}")
    blocker = _first_non_folder(out)
    if blocker is not None:
        raise DiffinvError(f"cannot create output folder {out}: {blocker} is a file")
    if replace:
        from diffinv.fileio import check_replaceable, claim_output_folder

        check_replaceable(out, overwrite=overwrite, inputs=inputs)
        _check_writable(_nearest_existing(out.parent), out)
        claim_output_folder(out, overwrite=overwrite, inputs=inputs)
    else:
        _check_writable(_nearest_existing(out), out)
    return out


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] = (), *,
                      overwrite: bool, option: str = "--overwrite") -> Path:
    """Check, before any work, that file ``path`` can be written; ``suffixes`` (lower case, with
    the dot) limits its extension. An existing file is refused unless ``overwrite`` (the error
    names ``option``, the flag that allows it), so a command never replaces a user's file
    unasked. Creates nothing."""
    out = Path(path)
    if out.is_dir():
        raise DiffinvError(f"output file {out} is a folder, not a file")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DiffinvError(f"output file {out} exists; give {option} to replace it (or "
                           "choose another name)")
    if suffixes and out.suffix.lower() not in suffixes:
        raise DiffinvError(f"output file {out} must end in {' or '.join(suffixes)}")
    blocker = _first_non_folder(out)
    if blocker is not None:
        raise DiffinvError(f"cannot create output file {out}: {blocker} is a file")
    _check_writable(_nearest_existing(out.parent), out)
    return out
