"""Clip files: read a user's clip, write a clip's frames and GIF.

:func:`read_clip` reads one clip ``(T, C, H, W)`` in [-1, 1] and its frame rate from

* a **folder of frames**: its image files (``.png``, ``.jpg``, ``.jpeg``, ... as
  :data:`diffinv.data.images.IMAGE_SUFFIXES`) in name order, digits compared as numbers
  (``f2.png`` before ``f10.png``; zero-padded names sort the same either way); other files and
  hidden files are ignored; the frame rate is not known (``None``);
* an **animated GIF**: every frame (Pillow composites each onto the previous one as the GIF says),
  the frame rate from the first frame's duration;
* a **video file** (``.mp4``, ``.mov``, ``.avi``, ``.mkv``, ``.webm``, ``.m4v``): only with the
  optional package ``imageio-ffmpeg`` installed (``pip install imageio-ffmpeg``); without it the
  file is refused, saying so.

Each frame is converted as :func:`diffinv.data.images.read_image` converts an image file: gray
(``channels=1``) or RGB (3), centre-cropped to a square and resized to ``size`` when given, 8-bit
values mapped to [-1, 1] (16-bit gray frames of a folder at their own scale, as ``read_image``).
``frames=N`` keeps the first ``N`` frames.

Refused with one :class:`~diffinv.errors.DiffinvError` line: a path that does not exist, a folder
with no image files, a single image file or a one-frame GIF (a clip needs at least
:data:`~diffinv.video.clips.MIN_FRAMES` frames), frames of different sizes (without ``size``:
the first frame that differs is named), an unreadable or truncated file, a video file without
``imageio-ffmpeg``, and a clip whose frames would not fit in the memory available.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffinv.errors import DiffinvError, MissingAssetError
from diffinv.video.clips import MIN_FRAMES, stack_frames

GIF_SUFFIXES = (".gif",)
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
FFMPEG_HINT = ("reading video files needs the optional package imageio-ffmpeg (pip install "
               "imageio-ffmpeg); or give the clip as a folder of PNG frames or an animated GIF")


def is_clip_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a clip by its form: a folder, a GIF or a video file."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in GIF_SUFFIXES + VIDEO_SUFFIXES


def _natural_key(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a clip folder in frame order (module docstring); refuses a folder
    without any."""
    from diffinv.data.images import IMAGE_SUFFIXES

    d = Path(folder)
    files = [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DiffinvError(f"clip folder {d} holds no image files ({', '.join(IMAGE_SUFFIXES)}): "
                           "a clip folder holds its frames, one image file each, in name order")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _convert(im, size: int | None, channels: int) -> Tensor:
    """A Pillow frame -> ``(C, H, W)`` float32 in [-1, 1] (read_image's conversion)."""
    from diffinv.data.images import crop_resize

    im = crop_resize(im.convert("L" if channels == 1 else "RGB"), size)
    arr = np.asarray(im, dtype=np.uint8)
    x = torch.from_numpy(arr.astype(np.float32)).div_(127.5).sub_(1.0)
    return x[None] if channels == 1 else x.permute(2, 0, 1).contiguous()


def _check_fit(n: int, channels: int, hw: tuple[int, int], size: int | None, what: str) -> None:
    from diffinv.resources import check_memory

    h, w = (size, size) if size else hw
    # the frames, their float copy in the stack and the measurement: a small multiple
    check_memory(4 * 4 * n * channels * h * w, f"reading {n} frames of {channels}x{h}x{w} from "
                 f"{what}", hint="pass --size to shrink the frames or --frames to keep fewer")


def _gif_frames(path: Path, size: int | None, channels: int,
                limit: int | None) -> tuple[list[Tensor], float | None]:
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as im:
            n = int(getattr(im, "n_frames", 1))
            _check_fit(min(n, limit or n), channels, (im.height, im.width), size, str(path))
            duration = im.info.get("duration")
            out = []
            for frame in ImageSequence.Iterator(im):
                out.append(_convert(frame, size, channels))
                if limit is not None and len(out) >= limit:
                    break
    except OSError as e:
        raise DiffinvError(f"cannot read clip {path}: {e}") from None
    fps = 1000.0 / float(duration) if isinstance(duration, int | float) and duration > 0 else None
    return out, fps


def _ffmpeg_frames(path: Path) -> tuple[dict, Iterator[bytes]]:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise DiffinvError(f"cannot read {path}: {FFMPEG_HINT}") from None
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except Exception as e:  # noqa: BLE001 -- ffmpeg's errors come as RuntimeError, OSError...
        raise DiffinvError(f"cannot read video {path}: {str(e).splitlines()[0] if str(e) else e}"
                           ) from None
    return meta, gen


def _video_frames(path: Path, size: int | None, channels: int,
                  limit: int | None) -> tuple[list[Tensor], float | None]:
    from PIL import Image

    meta, gen = _ffmpeg_frames(path)
    try:
        w, h = (int(v) for v in meta["size"])
        fps = float(meta.get("fps") or 0) or None
        duration = float(meta.get("duration") or 0)
    except (KeyError, TypeError, ValueError):
        raise DiffinvError(f"cannot read video {path}: ffmpeg reports no frame size") from None
    guess = round(duration * fps) if fps and duration > 0 else 1
    _check_fit(min(guess, limit or guess), channels, (h, w), size, str(path))
    out = []
    try:
        for buf in gen:
            arr = np.frombuffer(buf, dtype=np.uint8)
            if arr.size != h * w * 3:
                raise DiffinvError(f"cannot read video {path}: a frame of {arr.size} bytes is not "
                                   f"{w}x{h} RGB")
            out.append(_convert(Image.fromarray(arr.reshape(h, w, 3)), size, channels))
            if limit is not None and len(out) >= limit:
                break
    except DiffinvError:
        raise
    except Exception as e:  # noqa: BLE001 -- a truncated stream ends ffmpeg with an error
        raise DiffinvError(f"cannot read video {path}: {str(e).splitlines()[0] if str(e) else e}"
                           ) from None
    finally:
        gen.close()
    return out, fps


def _folder_frames(folder: Path, size: int | None, channels: int,
                   limit: int | None) -> tuple[list[Tensor], list[str]]:
    from PIL import Image

    from diffinv.data.images import read_image

    files = frame_files(folder)[:limit]
    try:
        with Image.open(files[0]) as im:
            hw = (im.height, im.width)
    except OSError as e:
        raise DiffinvError(f"cannot read image {files[0]}: {e}") from None
    _check_fit(len(files), channels, hw, size, str(folder))
    return [read_image(p, size=size, channels=channels)[0] for p in files], [p.name for p in files]


def read_clip(path: str | os.PathLike, *, size: int | None = None, channels: int = 1,
              frames: int | None = None) -> tuple[Tensor, float | None]:
    """``(clip (T, C, H, W) float32 in [-1, 1], frame rate or None)`` of a folder of frames, an
    animated GIF or a video file (module docstring); ``frames`` keeps the first ``frames``."""
    from diffinv.checks import check_count

    p = Path(path)
    if channels not in (1, 3):
        raise DiffinvError(f"channels must be 1 or 3, got {channels}")
    if size is not None:
        check_count(size, "size")
    if frames is not None:
        check_count(frames, "frames", MIN_FRAMES)
    if not p.exists():
        raise MissingAssetError(f"clip {p} does not exist")
    names: Sequence[str] | None = None
    if p.is_dir():
        got, names = _folder_frames(p, size, channels, frames)
        fps = None
    elif p.suffix.lower() in GIF_SUFFIXES:
        got, fps = _gif_frames(p, size, channels, frames)
    elif p.suffix.lower() in VIDEO_SUFFIXES:
        got, fps = _video_frames(p, size, channels, frames)
    else:
        raise DiffinvError(f"{p} is not a clip: give a folder of frames, an animated GIF or a "
                           f"video file ({', '.join(VIDEO_SUFFIXES)}, with imageio-ffmpeg)")
    if len(got) < MIN_FRAMES:
        raise DiffinvError(f"clip {p} has {len(got)} frame(s); a clip needs at least "
                           f"{MIN_FRAMES} (a single frame is an image: measure it as one)")
    for i, f in enumerate(got[1:], start=1):
        if f.shape != got[0].shape:
            where = f"{names[i]} is" if names else f"frame {i} is"
            first = f"{names[0]} is" if names else "frame 0 is"
            raise DiffinvError(f"the frames of clip {p} differ in size: {where} "
                               f"{f.shape[-1]}x{f.shape[-2]}, {first} "
                               f"{got[0].shape[-1]}x{got[0].shape[-2]}; pass --size to resize "
                               "them all")
    return stack_frames(got, f"clip {p}"), fps


# ------------------------------------------------------------------ writing
def _as_grids(x: Tensor) -> list[Tensor]:
    """Clips ``(B, T, C, H, W)`` -> per frame ``t`` the ``B`` clips' frames side by side."""
    from diffinv.data.images import make_grid

    B, T = x.shape[:2]
    v = x.detach().float().cpu().clamp(-1, 1)
    if v.shape[2] not in (1, 3):
        v = v[:, :, :1]
    return [make_grid(v[:, t], ncol=min(8, B), value=1.0) for t in range(T)]


#: rows of the position bar under every GIF frame (before enlarging)
BAR_ROWS = 2


def with_position_bar(frame: Tensor, t: int, n: int) -> Tensor:
    """Frame ``(C, H, W)`` with :data:`BAR_ROWS` rows added below: white, black over the first
    ``(t + 1) / n`` of the width. It shows where the clip is, and it keeps consecutive GIF frames
    distinct (a GIF writer merges identical ones, so the GIF of a clip with a still stretch would
    have fewer frames than the clip)."""
    C, H, W = frame.shape
    bar = torch.ones(C, BAR_ROWS, W, dtype=frame.dtype)
    bar[:, :, :max(1, round(W * (t + 1) / n))] = -1.0
    return torch.cat([frame, bar], dim=1)


def save_gif(frames: Sequence[Tensor], path: str | os.PathLike, fps: float,
             scale: int = 1, *, bar: bool = False) -> Path:
    """Frames ``(C, H, W)`` in [-1, 1] (of one size) -> an animated GIF looping forever at
    ``fps`` frames per second, enlarged ``scale`` times (nearest); with ``bar``, each with the
    position bar (:func:`with_position_bar`) below it, which keeps every frame in the file.
    Without it, identical consecutive frames become one frame of their summed duration (the GIF
    writer's rule: it plays the same, but holds fewer frames)."""
    from PIL import Image

    from diffinv.data.images import to_uint8

    path = Path(path)
    ims = []
    for t, f in enumerate(frames):
        f = f.detach().float().cpu()
        im = Image.fromarray(to_uint8(with_position_bar(f, t, len(frames)) if bar else f))
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
        ims.append(im)
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=max(20, round(1000 / fps)),
                loop=0, disposal=1)
    return path


def save_clip_views(x: Tensor, folder: str | os.PathLike, name: str, fps: float,
                    scale: int | None = None) -> None:
    """``folder/frames/NAME_000.png ...`` (frame ``t`` of every clip side by side) and
    ``folder/NAME.gif`` for clips ``(B, T, C, H, W)`` (or one clip) in [-1, 1]."""
    from diffinv.data.images import save_image

    folder = Path(folder)
    x5 = x[None] if x.ndim == 4 else x
    grids = _as_grids(x5)
    scale = scale or max(1, 128 // max(x5.shape[-2:]))
    (folder / "frames").mkdir(exist_ok=True)
    for t, g in enumerate(grids):
        save_image(g, folder / "frames" / f"{name}_{t:03d}.png", scale=scale)
    save_gif(grids, folder / f"{name}.gif", fps, scale)


def side_by_side(columns: Sequence[Tensor]) -> list[Tensor]:
    """Per frame ``t``, one image: a row per clip, the columns side by side (e.g. truth |
    measurement | result). Columns are clips ``(B, T, C, h, w)`` of one ``B`` and ``T``; a smaller
    one is enlarged (nearest) to the largest size, a gray one repeated to the channels of the
    others."""
    from diffinv.data.images import make_grid

    cols = [c.detach().float().cpu() for c in columns]
    B, T = cols[0].shape[:2]
    for c in cols:
        if tuple(c.shape[:2]) != (B, T):
            raise DiffinvError(f"side_by_side: columns of {tuple(c.shape[:2])} clips x frames "
                               f"beside ({B}, {T})")
    h = max(c.shape[-2] for c in cols)
    w = max(c.shape[-1] for c in cols)
    chans = 3 if any(c.shape[2] == 3 for c in cols) else 1
    out = []
    for t in range(T):
        tiles = []
        for b in range(B):
            for c in cols:
                f = c[b, t, :3 if c.shape[2] >= 3 else 1][None]
                if tuple(f.shape[-2:]) != (h, w):
                    f = torch.nn.functional.interpolate(f, size=(h, w), mode="nearest")
                tiles.append(f.expand(-1, chans, -1, -1)[0].clamp(-1, 1))
        out.append(make_grid(torch.stack(tiles), ncol=len(cols), value=1.0))
    return out


__all__ = ["FFMPEG_HINT", "GIF_SUFFIXES", "VIDEO_SUFFIXES", "frame_files", "is_clip_path",
           "read_clip", "save_clip_views", "save_gif", "side_by_side", "with_position_bar"]
