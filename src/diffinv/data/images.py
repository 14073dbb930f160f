"""Reading and writing image files, and folders of users' own images.

Files are read with Pillow, centre-cropped to a square, resized (Lanczos/antialiased) to
``size`` and scaled to [-1, 1]; ``channels`` = 1 converts to gray, 3 to RGB. 8-bit files map
0..255 to [-1, 1]; 16-bit gray files (Pillow modes ``I;16*``, or ``I`` with values within
0..65535) map 0..65535 to [-1, 1] and are resized in floating point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffinv.checks import check_count
from diffinv.errors import DiffinvError, MissingAssetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


#: Pillow modes of 16-bit gray images (``I`` holds 32-bit integers: taken as 16-bit when its
#: values lie within 0..65535, which is how Pillow opens some 16-bit PNG and TIFF files)
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
WIDE_MAX = 65535


def crop_resize(im: Image.Image, size: int | None) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (Lanczos; None: as is)."""
    if size is None:
        return im
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((size, size), Image.Resampling.LANCZOS) if s != size else im


def _read_wide_gray(im: Image.Image, path: Path, size: int | None) -> np.ndarray:
    """A 16-bit gray image as float32 in [0, 255] (the 8-bit scale), resized in float."""
    arr = np.asarray(im).astype(np.float64)
    if arr.size and (arr.min() < 0 or arr.max() > WIDE_MAX):
        raise DiffinvError(f"cannot read image {path}: its 32-bit integer pixels lie in "
                           f"[{arr.min():.0f}, {arr.max():.0f}], beyond the 16-bit range "
                           f"0..{WIDE_MAX}; save it as an 8- or 16-bit image")
    scaled = Image.fromarray((arr * (255.0 / WIDE_MAX)).astype(np.float32))
    return np.clip(np.asarray(crop_resize(scaled, size), dtype=np.float32), 0.0, 255.0)


def read_image(path: str | Path, size: int | None = None, channels: int = 1) -> torch.Tensor:
    """One image file -> (1, C, size, size) float32 in [-1, 1].

    8-bit files are scaled from 0..255 and 16-bit gray files from 0..65535 (see the module
    docstring); a floating-point image (Pillow mode ``F``), whose scale is unknown, is refused.
    """
    path = Path(path)
    if path.is_dir():
        raise DiffinvError(f"{path} is a folder, not an image file (give image files, or "
                           "--dataset for a data set)")
    if not path.is_file():
        raise MissingAssetError(f"image file {path} does not exist")
    if channels not in (1, 3):
        raise DiffinvError(f"channels must be 1 or 3, got {channels}")
    if size is not None:
        check_count(size, "size")
    try:
        with Image.open(path) as im:
            if im.mode == "F":
                raise DiffinvError(f"cannot read image {path}: it holds floating-point pixels "
                                   "(mode F) whose scale is unknown; save it as an 8- or 16-bit "
                                   "image")
            if im.mode in WIDE_GRAY_MODES:
                arr = _read_wide_gray(im, path, size)
                if channels == 3:
                    arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                im = crop_resize(im.convert("L" if channels == 1 else "RGB"), size)
                arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise DiffinvError(f"cannot read image {path}: {e}") from e
    x = torch.from_numpy(arr.astype(np.float32)).div_(127.5).sub_(1.0)
    return x.reshape(1, 1, *arr.shape) if channels == 1 else x.permute(2, 0, 1).unsqueeze(0)


def read_folder(folder: str | Path, size: int, channels: int = 1) -> tuple[torch.Tensor, list[str]]:
    """All images of a folder (sorted by name) -> ((N, C, size, size), names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingAssetError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DiffinvError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return torch.cat([read_image(p, size, channels) for p in files]), [p.name for p in files]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) in [-1, 1] -> uint8 array (H, W) or (H, W, C), clipped."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.numpy()


def save_image(x: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Save one image (C, H, W) in [-1, 1] as PNG, optionally enlarged by nearest ``scale``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(to_uint8(x))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    im.save(path)
    return path


def make_grid(
    images: torch.Tensor, ncol: int = 8, pad: int = 2, value: float = 1.0
) -> torch.Tensor:
    """(N, C, H, W) -> one (C, H', W') image with the N tiles in rows of ``ncol``."""
    n, c, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    grid = torch.full(
        (c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), value, dtype=images.dtype
    )
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[
            :,
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + k * (w + pad) : pad + k * (w + pad) + w,
        ] = images[i]
    return grid


def save_panel(columns: Sequence[torch.Tensor], path: str | Path, scale: int = 4) -> Path:
    """Save rows of images side by side: ``columns[j][i]`` is row i, column j (e.g. truth | y | x).

    Columns may differ in size (a 8x8 low-resolution measurement beside 32x32 images): each tile
    is upsampled (nearest) to the largest size.
    """
    cols = [c.detach().float().cpu() for c in columns]
    n = cols[0].shape[0]
    h = max(c.shape[-2] for c in cols)
    chans = max(c.shape[1] for c in cols)
    tiles = []
    for i in range(n):
        for c in cols:
            t = c[i : i + 1]
            if t.shape[-2] != h:
                t = torch.nn.functional.interpolate(t, size=(h, h), mode="nearest")
            if t.shape[1] != chans:
                t = t.expand(-1, chans, -1, -1)
            tiles.append(t[0])
    return save_image(make_grid(torch.stack(tiles), ncol=len(cols)), path, scale=scale)
