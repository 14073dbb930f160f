r"""Clips with known motion made from the 32x32 test (or validation) images, with their exact flow.

Each clip animates one source image ``x`` (an image the priors model) along a seeded trajectory
and keeps the exact flow between consecutive frames in the convention of
:mod:`diffinv.video.flow` (``flow[t]`` anchored at frame ``t``, pointing into frame ``t + 1``),
with its validity mask.

**Smooth global motions** (``translate``, ``rotate``, ``zoom`` and ``similarity``, all three at
once). Frame ``t`` shows ``x`` moved by a similarity about the frame centre ``c``: the source point
``s`` appears at ``p = c + d_t + z_t R(a_t)(s - c)``, so frame ``t`` is ``x`` resampled at
``g_t(p) = c + R(-a_t)(p - c - d_t) / z_t`` (bicubic, ``align_corners=True``, background -1 outside
``x``, clipped to [-1, 1]). With ``s = t / (T - 1)`` the trajectories are smooth and centred on the
middle of the clip:

* translation ``d(s) = D (s - 1/2) + b n 4 s (1 - s)``: total drift ``|D| ~ U(1, 4)`` px in a
  uniform direction, bent by ``b ~ U(-0.5, 0.5)`` px along the normal ``n`` (sub-pixel per frame);
* rotation ``a(s) = A (s - 1/2)``, ``|A| ~ U(4, 16)`` degrees over the clip, random sign;
* zoom ``z(s) = Z^{s - 1/2}``, ``Z = exp(+-U(log 1.1, log 1.3))`` (zoom in or out);
* similarity: the three at once with ``|D| ~ U(0.5, 3)``, ``|A| ~ U(2, 10)``, ``Z`` in ``[1.05, 1.2]``.

The flow is exact: ``flow_t(p) = g_{t+1}^{-1}(g_t(p)) - p``. Warping frame ``t + 1`` by it
reproduces frame ``t`` up to interpolation error (both frames are resamplings of the same ``x``);
``valid_t`` is 0 where ``p + flow_t(p)`` leaves the frame.

**Bounce** (Moving-MNIST, Srivastava et al. 2015, scaled to one object on the 32x32 canvas). The
object is the tight box of the non-background pixels of ``x`` (about 20x20 for a digit: kept at its
native size, the size the priors were trained on; the 64 -> 32 canvas scaling is applied to the
speed instead, 2-6 -> 1-3 px/frame). Its top-left corner starts uniformly in the free range, moves
with speed ``U(1, 3)`` px/frame in a uniform direction, and reflects at the borders; it is placed at
whole pixels (the position rounded), so frames are exact copies of ``x``'s pixels and the flow is the
integer displacement of the box inside the box's footprint, 0 on the static background, with
``valid = 0`` on background pixels the object covers at ``t + 1``: warping is exact there.
Caveat: the priors saw centred objects; a bouncing digit sits up to ~6 px off centre (a fashion
item, ~28 px wide, only moves within ~4 px), so measure a prior's fit before a table uses bounce.

Randomness: clip ``i`` (source image index ``i``) draws everything from its own generator
:func:`clip_generator(seed, i) <clip_generator>`, so a clip does not depend on the batch it is
made in and any clip can be remade alone.

Data specs: ``"<dataset>-<motion>:<split>[:<indices>]"``, e.g. ``"fashion32-video:test:0-7"``
(``video`` = ``similarity``), ``"mnist32-bounce:valid:0-99"`` (tune on ``valid``, report on ``test``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError, UnknownNameError
from diffinv.video.flow import in_frame, pixel_grid, sample_at

MOTIONS = ("translate", "rotate", "zoom", "similarity", "bounce")
_MOTION_ALIASES = {"video": "similarity"}
_BASES = ("fashion32", "mnist32")
#: the registered clip data sets: ``<base>-<motion>`` (plus ``<base>-video``)
VIDEO_SETS: dict[str, tuple[str, str]] = {
    f"{b}-{m}": (b, _MOTION_ALIASES.get(m, m))
    for b in _BASES for m in (*MOTIONS, *_MOTION_ALIASES)
}
DEFAULT_FRAMES = 8
RENDER_MODE = "bicubic"
MAX_FRAMES = 64
#: nominal frame rate stored with generated clips (for GIFs; the motion is per frame)
DEFAULT_FPS = 8.0


def clip_generator(seed: int, index: int) -> torch.Generator:
    """The generator of clip ``index`` of a data set made with ``seed`` (SHA-256 of both, in a
    namespace of its own so a solver seeded alike draws other numbers)."""
    digest = hashlib.sha256(f"diffinv-video:{int(seed)}:{int(index)}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _sign(g: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=g, dtype=torch.float64)) < 0.5 else -1.0


@dataclass(frozen=True)
class Clip:
    """One generated clip: frames ``(T, C, H, W)``, exact ``flow`` ``(T - 1, 2, H, W)``, ``valid``
    ``(T - 1, 1, H, W)``, and ``motion``: the kind and the drawn parameters."""

    frames: Tensor
    flow: Tensor
    valid: Tensor
    motion: dict[str, Any]
    fps: float = DEFAULT_FPS


@dataclass(frozen=True)
class ClipSet:
    """Clips ``(N, T, C, H, W)`` with flows ``(N, T - 1, 2, H, W)``, masks ``(N, T - 1, 1, H, W)``,
    source labels ``(N,)``, source image indices and each clip's motion."""

    name: str
    split: str
    clips: Tensor
    flows: Tensor
    valid: Tensor
    labels: Tensor
    indices: list[int]
    motions: list[dict[str, Any]] = field(default_factory=list)
    fps: float = DEFAULT_FPS

    def __len__(self) -> int:
        return self.clips.shape[0]

    def __getitem__(self, i: int) -> Clip:
        return Clip(self.clips[i], self.flows[i], self.valid[i], self.motions[i], self.fps)


# ------------------------------------------------------------------ smooth similarity motions
def _draw_similarity(kind: str, g: torch.Generator) -> dict[str, Any]:
    """Trajectory parameters (always drawn in the same order, so each kind has one stream)."""
    D, A, Z = {"translate": ((1.0, 4.0), None, None),
               "rotate": (None, (4.0, 16.0), None),
               "zoom": (None, None, (1.1, 1.3)),
               "similarity": ((0.5, 3.0), (2.0, 10.0), (1.05, 1.2))}[kind]
    p: dict[str, Any] = {"motion": kind, "drift": [0.0, 0.0], "bend": 0.0, "angle": 0.0,
                         "zoom": 1.0}
    if D is not None:
        mag, phi = _u(g, *D), _u(g, 0.0, 2 * math.pi)
        p["drift"] = [mag * math.cos(phi), mag * math.sin(phi)]
        p["bend"] = _u(g, -0.5, 0.5)
    if A is not None:
        p["angle"] = _sign(g) * _u(g, *A)
    if Z is not None:
        p["zoom"] = math.exp(_sign(g) * _u(g, math.log(Z[0]), math.log(Z[1])))
    return p


def _similarity_states(p: dict[str, Any], T: int) -> list[tuple[float, float, float, float]]:
    """``(dx, dy, angle_rad, zoom)`` of every frame."""
    Dx, Dy = p["drift"]
    n = math.hypot(Dx, Dy)
    nx, ny = (-Dy / n, Dx / n) if n > 0 else (0.0, 0.0)
    out = []
    for t in range(T):
        s = t / (T - 1)
        bend = p["bend"] * 4 * s * (1 - s)
        out.append((Dx * (s - 0.5) + bend * nx, Dy * (s - 0.5) + bend * ny,
                    math.radians(p["angle"]) * (s - 0.5), p["zoom"] ** (s - 0.5)))
    return out


def _to_source(grid: Tensor, st, c: tuple[float, float]) -> Tensor:
    """``g_t(p) = c + R(-a)(p - c - d) / z`` for the ``(2, H, W)`` positions ``grid``."""
    dx, dy, a, z = st
    u, v = grid[0] - c[0] - dx, grid[1] - c[1] - dy
    ca, sa = math.cos(a), math.sin(a)
    return torch.stack([c[0] + (ca * u + sa * v) / z, c[1] + (-sa * u + ca * v) / z])


def _from_source(src: Tensor, st, c: tuple[float, float]) -> Tensor:
    """``g_t^{-1}(s) = c + d + z R(a)(s - c)``."""
    dx, dy, a, z = st
    u, v = src[0] - c[0], src[1] - c[1]
    ca, sa = math.cos(a), math.sin(a)
    return torch.stack([c[0] + dx + z * (ca * u - sa * v), c[1] + dy + z * (sa * u + ca * v)])


def _similarity_clip(x: Tensor, p: dict[str, Any], T: int) -> tuple[Tensor, Tensor, Tensor]:
    C, H, W = x.shape
    c = ((W - 1) / 2, (H - 1) / 2)
    grid = pixel_grid(H, W, dtype=torch.float64)
    states = _similarity_states(p, T)
    srcs = [_to_source(grid, st, c) for st in states]
    src = (x.double() + 1)[None].expand(T, C, H, W)  # background -1 -> 0 for zero padding
    frames = sample_at(src, torch.stack(srcs), mode=RENDER_MODE, padding_mode="zeros") - 1
    frames = frames.clamp(-1, 1)
    flow = torch.stack([_from_source(srcs[t], states[t + 1], c) - grid for t in range(T - 1)])
    return frames.to(x.dtype), flow.to(x.dtype), in_frame(flow).to(x.dtype)


# ------------------------------------------------------------------ bounce
def _fold(p: float, L: float) -> float:
    """Position after reflections at 0 and ``L`` (a triangle wave of period 2L)."""
    if L <= 0:
        return 0.0
    q = math.fmod(p, 2 * L)
    q = q + 2 * L if q < 0 else q
    return q if q <= L else 2 * L - q


def _bounce_clip(x: Tensor, g: torch.Generator, T: int,
                 speed: tuple[float, float] = (1.0, 3.0)) -> tuple[Tensor, Tensor, Tensor, dict]:
    C, H, W = x.shape
    fg = (x > -1 + 1e-6).any(0)
    if not fg.any():
        raise DiffinvError("bounce needs an object on the background (-1); this image is blank")
    rows, cols = torch.nonzero(fg.any(1)).flatten(), torch.nonzero(fg.any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    patch = x[:, r0:r1, c0:c1]
    h, w = patch.shape[-2:]
    Ly, Lx = H - h, W - w
    y0, x0 = _u(g, 0.0, Ly), _u(g, 0.0, Lx)
    v, phi = _u(g, *speed), _u(g, 0.0, 2 * math.pi)
    vx, vy = v * math.cos(phi), v * math.sin(phi)
    pos = [(round(_fold(y0 + vy * t, Ly)), round(_fold(x0 + vx * t, Lx))) for t in range(T)]
    frames = torch.full((T, C, H, W), -1.0, dtype=x.dtype)
    foot = torch.zeros(T, H, W, dtype=torch.bool)
    for t, (py, px) in enumerate(pos):
        frames[t, :, py:py + h, px:px + w] = patch
        foot[t, py:py + h, px:px + w] = True
    flow = torch.zeros(T - 1, 2, H, W, dtype=x.dtype)
    valid = torch.ones(T - 1, 1, H, W, dtype=x.dtype)
    for t in range(T - 1):
        dy, dx = pos[t + 1][0] - pos[t][0], pos[t + 1][1] - pos[t][1]
        flow[t, 0][foot[t]], flow[t, 1][foot[t]] = float(dx), float(dy)
        valid[t, 0][~foot[t] & foot[t + 1]] = 0.0  # background covered by the object at t + 1
    # (row, col) order throughout: the object's box in x (top, left, height, width), its
    # unrounded start, its velocity in px/frame, and the top-left corner it is placed at per frame
    info = {"motion": "bounce", "box": [r0, c0, h, w], "start": [y0, x0], "velocity": [vy, vx],
            "positions": [list(p) for p in pos]}
    return frames, flow, valid, info


# ------------------------------------------------------------------ public API
def check_motion(motion: str) -> str:
    m = _MOTION_ALIASES.get(motion, motion)
    if m not in MOTIONS:
        raise UnknownNameError("motion", motion, [*MOTIONS, *_MOTION_ALIASES])
    return m


def _check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= MAX_FRAMES:
        raise DiffinvError(f"frames must be an integer in [2, {MAX_FRAMES}] (8 to 16 intended), "
                           f"got {frames!r}")
    return frames


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 3 or not image.is_floating_point():
        raise ShapeError(f"image must be a float tensor (C, H, W); got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image)}")
    if min(image.shape[-2:]) < 2 or not torch.isfinite(image).all():
        raise ShapeError("image must be finite and at least 2x2")
    return image.detach().cpu()


def make_clip(image: Tensor, motion: str, generator: torch.Generator,
              frames: int = DEFAULT_FRAMES) -> Clip:
    """Animate one image ``(C, H, W)`` in [-1, 1] along a ``motion`` drawn from ``generator``."""
    motion = check_motion(motion)
    T = _check_frames(frames)
    x = _check_image(image)
    if motion == "bounce":
        fr, flow, valid, info = _bounce_clip(x, generator, T)
    else:
        info = _draw_similarity(motion, generator)
        fr, flow, valid = _similarity_clip(x, info, T)
    return Clip(fr, flow, valid, info)


def similarity_clip(image: Tensor, frames: int = DEFAULT_FRAMES, *,
                    drift: tuple[float, float] = (0.0, 0.0), bend: float = 0.0, angle: float = 0.0,
                    zoom: float = 1.0) -> Clip:
    """A smooth-motion clip with given (not drawn) trajectory parameters: total ``drift`` (px, x
    then y), ``bend`` (px), total ``angle`` (degrees) and total ``zoom`` over the clip (see the
    module docstring)."""
    T = _check_frames(frames)
    x = _check_image(image)
    if not (isinstance(zoom, (int, float)) and zoom > 0 and math.isfinite(zoom)):
        raise DiffinvError(f"zoom must be a finite number > 0, got {zoom!r}")
    p = {"motion": "similarity", "drift": [float(drift[0]), float(drift[1])], "bend": float(bend),
         "angle": float(angle), "zoom": float(zoom)}
    return Clip(*_similarity_clip(x, p, T), p)


def make_clips(images: Tensor, indices: list[int] | None = None, *, motion: str = "similarity",
               frames: int = DEFAULT_FRAMES, seed: int = 0, name: str = "",
               split: str = "", labels: Tensor | None = None) -> ClipSet:
    """One clip per image ``(N, C, H, W)``; clip ``k`` draws from ``clip_generator(seed,
    indices[k])`` (``indices`` default ``0 .. N - 1``: pass the images' data-set indices)."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ShapeError("images must be a batch (N, C, H, W)")
    idx = list(range(images.shape[0])) if indices is None else [int(i) for i in indices]
    if len(idx) != images.shape[0] or not idx:
        raise ShapeError(f"got {images.shape[0]} images but {len(idx)} indices")
    clips = [make_clip(images[k], motion, clip_generator(seed, i), frames)
             for k, i in enumerate(idx)]
    lab = labels if labels is not None else torch.full((len(idx),), -1, dtype=torch.long)
    return ClipSet(name, split, torch.stack([c.frames for c in clips]),
                   torch.stack([c.flow for c in clips]), torch.stack([c.valid for c in clips]),
                   lab, idx, [c.motion for c in clips])


_SPEC = re.compile(r"^(?P<ds>[\w-]+):(?P<split>\w+)(?::(?P<sel>[^:]*))?$")


def is_video_set(name: str) -> bool:
    return name in VIDEO_SETS


def get_clips(spec: str, *, frames: int = DEFAULT_FRAMES, seed: int = 0) -> ClipSet:
    """Clips named by ``"<dataset>-<motion>:<split>[:<indices>]"``, e.g.
    ``"fashion32-video:test:0-7"`` (clip ``k`` animates image ``indices[k]`` of the split)."""
    from diffinv import data
    from diffinv.data.datasets import index_selection, parse_indices

    m = _SPEC.match(str(spec).strip())
    if not m:
        raise DiffinvError(f"bad clip spec {spec!r}; expected DATASET-MOTION:SPLIT[:INDICES], e.g. "
                           "fashion32-video:test:0-7")
    if m["ds"] not in VIDEO_SETS:
        raise UnknownNameError("video data set", m["ds"], list(VIDEO_SETS))
    base, motion = VIDEO_SETS[m["ds"]]
    _check_frames(frames)
    if m["sel"] is not None:
        index_selection(m["sel"])  # bad syntax fails before the split is loaded
    s = data.load_split(base, m["split"])
    idx = parse_indices(m["sel"], len(s)) if m["sel"] is not None else list(range(len(s)))
    t = torch.tensor(idx, dtype=torch.long)
    return make_clips(s.images[t], idx, motion=motion, frames=frames, seed=seed, name=m["ds"],
                      split=m["split"], labels=s.labels[t])


__all__ = ["DEFAULT_FRAMES", "MOTIONS", "VIDEO_SETS", "Clip", "ClipSet", "check_motion",
           "clip_generator", "get_clips", "is_video_set", "make_clip", "make_clips",
           "similarity_clip"]
