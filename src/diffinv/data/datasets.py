"""Data sets of the embedded 32x32 domain, in the frame of DESIGN.md.

28x28 images are padded with background (black) by 2 px on each side to 32x32 and scaled to
[-1, 1]: ``x = 2 * uint8 / 255 - 1``. Converted splits are cached as ``.npz`` under
``$DIFFINV_CACHE`` (default ``~/.cache/diffinv``) keyed by the source file's hash.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffinv.errors import DiffinvError, UnknownNameError

SPLITS = ("train", "valid", "test")
FRAME = 32


@dataclass(frozen=True)
class ImageSet:
    """Images (N, 1, 32, 32) float32 in [-1, 1] with their integer labels (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def _mnist() -> dict:
    from diffinv.data.mnist import load_mnist_uint8

    return load_mnist_uint8()


def _fashion() -> dict:
    from diffinv.data.fashion import load_fashion_uint8

    return load_fashion_uint8()


_LOADERS: dict[str, tuple[Callable[[], dict], str]] = {
    "mnist32": (_mnist, "mnist"),
    "fashion32": (_fashion, "fashion-train-images"),
}
_ALIASES = {"mnist": "mnist32", "fashion": "fashion32", "fashion-mnist": "fashion32"}


def canonical_name(dataset: str) -> str:
    from diffinv.data.kernels import KERNEL_SETS

    name = _ALIASES.get(dataset, dataset)
    from diffinv.video.data import VIDEO_SETS

    if name in VIDEO_SETS:  # clips, not images
        raise DiffinvError(f"{dataset!r} is a video data set (clips (T, C, H, W)): load it with "
                           f"diffinv.video.get_clips('{dataset}:SPLIT[:INDICES]')")
    if name not in _LOADERS and name not in KERNEL_SETS:
        raise UnknownNameError("data set", dataset,
                               list(_LOADERS) + list(KERNEL_SETS) + list(_ALIASES))
    return name


def to_frame(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 32, 32) float32 in [-1, 1], padded with background."""
    x = torch.from_numpy(np.array(images_uint8, copy=True)).float().div_(255.0)
    pad = (FRAME - x.shape[-1]) // 2
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=0.0)
    return (x * 2.0 - 1.0).unsqueeze(1)


def _cache_dir() -> Path:
    return Path(os.environ.get("DIFFINV_CACHE", Path.home() / ".cache" / "diffinv"))


def _cached_uint8(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from diffinv.assets import ASSETS, locate

    loader, asset = _LOADERS[name]
    locate(asset)  # raises with the install command when missing, checks the hash
    path = _cache_dir() / f"{name}-{ASSETS[asset].sha256[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in SPLITS}
        except (OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)  # corrupt cache: rebuild
    data = loader()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp, **{f"{s}_x": data[s][0] for s in SPLITS}, **{f"{s}_y": data[s][1] for s in SPLITS}
        )
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home is fine: we just do not cache
    return data


def load_split(dataset: str, split: str) -> ImageSet:
    """Load ``split`` ("train", "valid", "test") of ``dataset`` ("mnist32", "fashion32", or a
    generated kernel set such as "kernels9", whose labels are 0 motion / 1 Gaussian: see
    :mod:`diffinv.data.kernels`)."""
    name = canonical_name(dataset)
    if split not in SPLITS:
        raise UnknownNameError("split", split, list(SPLITS))
    from diffinv.data.kernels import KERNEL_SETS, load_kernel_split

    if name in KERNEL_SETS:
        return ImageSet(name, split, *load_kernel_split(name, split))
    x, y = _cached_uint8(name)[split]
    return ImageSet(name, split, to_frame(x), torch.from_numpy(np.asarray(y, dtype=np.int64)))


_SPEC = re.compile(r"^(?P<ds>[\w-]+):(?P<split>\w+)(?::(?P<sel>[^:]*))?$")
_PART = re.compile(r"^(?P<a>\d+)(?:-(?P<b>\d+))?$")


def index_selection(sel: str) -> list[int]:
    """ "17" -> [17]; "0-3" -> [0, 1, 2, 3]; "1,5,9" -> [1, 5, 9]; syntax only (no bound)."""
    out: list[int] = []
    for part in sel.split(","):
        m = _PART.match(part.strip())
        if not m:
            raise DiffinvError(f"image selection {sel!r}: {part!r} is not an index (0, 1, ...) "
                               "or a range A-B")
        a, b = int(m["a"]), int(m["b"] if m["b"] is not None else m["a"])
        if b < a:
            raise DiffinvError(f"image selection {sel!r}: empty range {part!r} (write A-B with "
                               "A <= B)")
        out.extend(range(a, b + 1))
    return out


def parse_indices(sel: str, n: int) -> list[int]:
    """:func:`index_selection` checked against the ``n`` images of a split."""
    out = index_selection(sel)
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise DiffinvError(f"image indices {bad[:5]} out of range 0..{n - 1}")
    return out


def get_images(spec: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Images named by ``"DATASET:SPLIT[:INDICES]"``, e.g. ``"fashion32:test:0-3"``.

    Returns (images, labels, indices). Without indices the whole split is returned.
    """
    m = _SPEC.match(spec.strip())
    if not m:
        raise DiffinvError(
            f"bad image spec {spec!r}; expected DATASET:SPLIT[:INDICES], e.g. fashion32:test:0-3"
        )
    if m["sel"] is not None:
        index_selection(m["sel"])  # bad syntax fails before the split is loaded
    s = load_split(m["ds"], m["split"])
    idx = parse_indices(m["sel"], len(s)) if m["sel"] is not None else list(range(len(s)))
    t = torch.tensor(idx, dtype=torch.long)
    return s.images[t], s.labels[t], idx
