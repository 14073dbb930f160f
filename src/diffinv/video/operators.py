r"""Clip operators: per-frame image operators, the temporal uniform PSF, and chains of them.

A :class:`ClipOperator` is the clip counterpart of :class:`diffinv.physics.Operator` (same
attributes: ``linear``, ``adjoint``, ``param_names``, ``draw_params``, ``config``). It takes a clip
``(T, C, H, W)`` or a batch ``(B, T, C, H, W)`` and returns the same rank. Parameters are per clip:
a value is given with a leading batch dimension (``B`` or ``1``) or, for one clip, without it.
It is deliberately not an ``Operator``: image measurements and solvers refuse it, rather than
read its frame axis as a batch of independent images.

* :class:`PerFrame` applies a registered image operator to every frame, with per-frame parameters
  of shape ``(T, ...)`` per clip (a random-inpainting mask, a motion kernel per frame;
  ``shared=True`` draws one set and repeats it over the frames). Adjoint: the image operator's
  adjoint frame by frame.
* :class:`TemporalBlur`: the uniform PSF of ``width`` frames along time,
  ``y_s = (1/w) \sum_{k} x_{\beta(s + k)}``, ``k = -(w//2) .. w - 1 - w//2`` (the convention of
  spatial :mod:`~diffinv.physics.blur`), ``beta`` the boundary rule: ``"circular"`` (default:
  wrap-around, as the benchmarks' spatial blur; the matrix is a symmetric circulant, so
  ``A^T = A`` and the temporal DFT diagonalises it; needs ``T >= w``), ``"replicate"`` (edge
  frames repeated), ``"reflect"`` (mirrored about the edge frame, ``T > w//2``), ``"zero"``. Every
  rule is applied as an explicit ``T x T`` matrix ``M`` along time, and the adjoint is ``M^T``:
  exact (to rounding) whatever the rule.
* :class:`ClipChain` ``[A_1, ..., A_n]``: ``y = A_n(... A_1(x))``, adjoint in reverse order. The
  registered "temporal-blur+motion-blur" is ``[PerFrame(motion-blur), TemporalBlur]``: each
  instant is motion-blurred by its own kernel, then exposure integrates over time. With a kernel
  shared over the frames the two commute.

Registry: :func:`make_clip_operator` (``list_clip_operators()``); ``"frames:<image operator>"``
wraps any registered image operator, e.g. ``make_clip_operator("frames:gaussian-blur")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.errors import DiffinvError, ShapeError, UnknownNameError
from diffinv.physics.base import (
    OperatorTraits,
    check_params,
    constructor_config,
    settings_repr,
    vjp_adjoint,
)
from diffinv.video.clips import batched, check_clip, unbatched

Shape = tuple[int, ...]
TEMPORAL_BOUNDARIES = ("circular", "replicate", "reflect", "zero")


class ClipOperator(OperatorTraits, nn.Module):
    """Base class of the clip operators (see the module docstring)."""

    # ------------------------------------------------------------ to be implemented
    def apply(self, x: Tensor, **params: Tensor) -> Tensor:
        """``A(x)`` for a validated batch of clips ``(B, T, C, H, W)``."""
        raise NotImplementedError

    def out_shape(self, in_shape: Sequence[int]) -> Shape:
        """Output shape for a batch of clips of shape ``(B, T, C, H, W)`` (raises ShapeError)."""
        return tuple(int(s) for s in in_shape)

    def in_shape(self, out_shape: Sequence[int]) -> Shape:
        return tuple(int(s) for s in out_shape)

    def param_clip_ndim(self, name: str) -> int | None:
        """Dimensions of one clip's value of parameter ``name`` (None: unknown)."""
        return None

    def draw_params(self, generators: Sequence[torch.Generator], clip_shape: Sequence[int], *,
                    device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """One parameter set per clip generator, for clips of shape ``(T, C, H, W)``."""
        return {}

    def config(self) -> dict[str, Any]:
        return constructor_config(self)

    # ------------------------------------------------------------ public API
    def forward(self, x: Tensor, **params: Tensor) -> Tensor:
        check_clip(x, "x")
        x5, single = batched(x)
        self.out_shape(x5.shape)
        params = self._check_params(params, x5.shape[0], single)
        return unbatched(self.apply(x5, **params), single)

    def adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        """``A^T y`` for a linear clip operator (``y`` of the rank ``x`` had)."""
        if not self.linear:
            raise DiffinvError(f"{type(self).__name__} is not linear: it has no adjoint")
        y = self.check_measurement(y)
        y5, single = batched(y)
        params = self._check_params(params, y5.shape[0], single)
        return unbatched(self.apply_adjoint(y5, **params), single)

    def apply_adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        """The exact vector-Jacobian product of the (linear) ``apply`` (override when cheaper)."""
        return vjp_adjoint(self.apply, self.in_shape(y.shape), y, params)

    def check_measurement(self, y: Tensor, name: str = "y") -> Tensor:
        """A finite clip (or batch of clips) of a shape this operator produces."""
        check_clip(y, name)
        y5, _ = batched(y)
        want = self.out_shape(self.in_shape(y5.shape))
        if tuple(y5.shape) != want:
            raise ShapeError(f"{name} of shape {tuple(y.shape)} does not fit "
                             f"{type(self).__name__} (it produces {want[int(y.ndim == 4):]})")
        return y

    # ------------------------------------------------------------ helpers
    def _check_params(self, params: dict[str, Any], batch: int, single: bool) -> dict[str, Tensor]:
        return check_params(self, params, batch, self.param_clip_ndim,
                            missing_hint=" (draw them with draw_params)", shared="one clip",
                            each="per clip", batch_size="the number of clips",
                            need_batch_dim=True)

    def extra_repr(self) -> str:
        return settings_repr(self.config(), hide=(Tensor, nn.Module))


def frame_generators(g: torch.Generator, n: int) -> list[torch.Generator]:
    """``n`` generators for the frames of one clip, seeded by ``n`` draws from the clip's ``g``."""
    out = []
    for _ in range(n):
        s = int(torch.randint(0, 2**62, (), generator=g))
        out.append(torch.Generator(device="cpu").manual_seed(s))
    return out


class PerFrame(ClipOperator):
    """An image operator applied to every frame (``op``: an Operator or a registered name)."""

    def __init__(self, op: Any = "identity", shared: bool = False, **settings: Any):
        super().__init__()
        from diffinv.physics.base import Operator
        from diffinv.physics.registry import make_operator

        if isinstance(op, str):
            op = make_operator(op, **settings)
        elif settings:
            raise DiffinvError("settings are for an operator given by name")
        if isinstance(op, ClipOperator) or not isinstance(op, Operator):
            raise DiffinvError(f"PerFrame wraps an image Operator, got {type(op).__name__}")
        self.op = op
        self.shared = bool(shared)
        self.linear = bool(op.linear)
        self.blind = bool(op.blind)
        self.image_like = bool(getattr(op, "image_like", True))
        self.param_names = tuple(op.param_names)
        self.required_params = tuple(op.required_params)
        name = getattr(op, "registry_name", type(op).__name__)
        self.description = (f"{name} on every frame"
                            + (" (one parameter set per clip)" if self.shared else ""))

    def config(self) -> dict[str, Any]:
        return {"op": getattr(self.op, "registry_name", type(self.op).__name__),
                "settings": self.op.config(), "shared": self.shared}

    def param_clip_ndim(self, name: str) -> int | None:
        nd = self.op.param_ndim.get(name)
        return None if nd is None else nd + 1

    @staticmethod
    def _frames(shape: Sequence[int], what: str) -> tuple[int, int, tuple[int, ...]]:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 5:
            raise ShapeError(f"{what} must be a batch of clips (B, T, C, H, W); got {shape}")
        return shape[0], shape[1], shape[2:]

    def out_shape(self, in_shape):
        B, T, rest = self._frames(in_shape, "x")
        out = self.op.out_shape((B * T, *rest))
        return (B, T, *out[1:])

    def in_shape(self, out_shape):
        B, T, rest = self._frames(out_shape, "y")
        inn = self.op.in_shape((B * T, *rest))
        return (B, T, *inn[1:])

    def _flat_params(self, params: dict[str, Tensor], B: int, T: int) -> dict[str, Tensor]:
        out = {}
        for k, v in params.items():
            if v.ndim < 2 or v.shape[1] != T:
                raise ShapeError(f"parameter {k!r} of shape {tuple(v.shape)} must hold one value "
                                 f"per frame: (B or 1, T={T}, ...)")
            out[k] = v.expand(B, *v.shape[1:]).reshape(B * T, *v.shape[2:])
        return out

    def apply(self, x: Tensor, **params: Tensor) -> Tensor:
        B, T = x.shape[:2]
        y = self.op(x.reshape(B * T, *x.shape[2:]), **self._flat_params(params, B, T))
        return y.reshape(B, T, *y.shape[1:])

    def apply_adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        B, T = y.shape[:2]
        x = self.op.adjoint(y.reshape(B * T, *y.shape[2:]), **self._flat_params(params, B, T))
        return x.reshape(B, T, *x.shape[1:])

    def draw_params(self, generators, clip_shape, *, device="cpu", dtype=torch.float32):
        shape = tuple(int(s) for s in clip_shape)
        if len(shape) != 4:
            raise ShapeError(f"clip_shape must be (T, C, H, W), got {shape}")
        T, frame = shape[0], shape[1:]
        per_clip = []
        for g in generators:
            gens = frame_generators(g, 1 if self.shared else T)
            d = self.op.draw_params(gens, frame, device=device, dtype=dtype)
            if self.shared:
                d = {k: v.expand(T, *v.shape[1:]).clone() for k, v in d.items()}
            per_clip.append(d)
        if not per_clip or not per_clip[0]:
            return {}
        return {k: torch.stack([d[k] for d in per_clip]) for k in per_clip[0]}


class TemporalBlur(ClipOperator):
    """Uniform PSF of ``width`` frames along time, with a ``boundary`` rule (module docstring)."""

    description = "temporal uniform PSF along time (width frames, boundary)"
    linear = True

    def __init__(self, width: int = 7, boundary: str = "circular"):
        super().__init__()
        if isinstance(width, bool) or int(width) != width or width < 1:
            raise DiffinvError(f"temporal PSF width must be an integer >= 1, got {width!r}")
        if boundary not in TEMPORAL_BOUNDARIES:
            raise DiffinvError(f"unknown temporal boundary {boundary!r}; known: "
                               f"{', '.join(TEMPORAL_BOUNDARIES)}")
        self.width = int(width)
        self.boundary = boundary
        self.description = f"temporal uniform PSF of {self.width} frames ({boundary} boundary)"

    def _check_frames(self, n: int) -> None:
        w = self.width
        if self.boundary == "circular" and n < w:
            raise ShapeError(f"a circular temporal PSF of {w} frames needs clips of at least {w} "
                             f"frames (got {n}); use boundary='replicate' for shorter clips")
        if self.boundary == "reflect" and n <= w // 2:
            raise ShapeError(f"a reflected temporal PSF of {w} frames needs clips of more than "
                             f"{w // 2} frames (got {n})")

    def out_shape(self, in_shape):
        shape = tuple(int(s) for s in in_shape)
        if len(shape) != 5:
            raise ShapeError(f"expected a batch of clips (B, T, C, H, W), got {shape}")
        self._check_frames(shape[1])
        return shape

    def matrix(self, T: int, *, dtype=torch.float64, device="cpu") -> Tensor:
        """The ``(T, T)`` matrix ``M`` with ``y_s = sum_t M[s, t] x_t``."""
        self._check_frames(T)
        w = self.width
        M = torch.zeros(T, T, dtype=torch.float64)
        for s in range(T):
            for k in range(-(w // 2), w - w // 2):
                j = s + k
                if self.boundary == "circular":
                    j %= T
                elif self.boundary == "replicate":
                    j = min(max(j, 0), T - 1)
                elif self.boundary == "reflect":
                    j = -j if j < 0 else (2 * (T - 1) - j if j > T - 1 else j)
                elif not 0 <= j < T:
                    continue
                M[s, j] += 1.0 / w
        return M.to(dtype=dtype, device=device)

    def apply(self, x: Tensor) -> Tensor:
        M = self.matrix(x.shape[1], dtype=x.dtype, device=x.device)
        return torch.einsum("st,bt...->bs...", M, x)

    def apply_adjoint(self, y: Tensor) -> Tensor:
        M = self.matrix(y.shape[1], dtype=y.dtype, device=y.device)
        return torch.einsum("ts,bt...->bs...", M, y)


class ClipChain(ClipOperator):
    """``y = A_n(... A_1(x))`` for clip operators ``ops = [A_1, ..., A_n]`` (disjoint params)."""

    def __init__(self, ops: Sequence[ClipOperator]):
        super().__init__()
        ops = list(ops)
        if not ops or not all(isinstance(o, ClipOperator) for o in ops):
            raise DiffinvError("ClipChain needs a non-empty list of clip operators")
        names = [n for o in ops for n in o.param_names]
        if len(names) != len(set(names)):
            raise DiffinvError(f"the operators of a chain must take distinct parameters; got "
                               f"{names}")
        self.ops = nn.ModuleList(ops)
        self.linear = all(o.linear for o in ops)
        self.blind = any(o.blind for o in ops)
        self.image_like = all(o.image_like for o in ops)
        self.param_names = tuple(names)
        self.required_params = tuple(n for o in ops for n in o.required_params)
        self.description = " then ".join(o.description for o in ops)

    def config(self) -> dict[str, Any]:
        return {"ops": [{"type": type(o).__name__, **o.config()} for o in self.ops]}

    def param_clip_ndim(self, name):
        for o in self.ops:
            if name in o.param_names:
                return o.param_clip_ndim(name)
        return None

    def out_shape(self, in_shape):
        shape = tuple(int(s) for s in in_shape)
        for o in self.ops:
            shape = o.out_shape(shape)
        return shape

    def in_shape(self, out_shape):
        shape = tuple(int(s) for s in out_shape)
        for o in reversed(self.ops):
            shape = o.in_shape(shape)
        return shape

    @staticmethod
    def _mine(o: ClipOperator, params: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in params.items() if k in o.param_names}

    def apply(self, x: Tensor, **params: Tensor) -> Tensor:
        for o in self.ops:
            x = o.apply(x, **self._mine(o, params))
        return x

    def apply_adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        for o in reversed(self.ops):
            y = o.apply_adjoint(y, **self._mine(o, params))
        return y

    def draw_params(self, generators, clip_shape, *, device="cpu", dtype=torch.float32):
        # one independent stream per operator, all derived from the clip's generator
        streams = [[torch.Generator(device="cpu").manual_seed(
            int(torch.randint(0, 2**62, (), generator=g))) for g in generators]
            for _ in self.ops]
        out: dict[str, Tensor] = {}
        for o, gens in zip(self.ops, streams, strict=True):
            out.update(o.draw_params(gens, clip_shape, device=device, dtype=dtype))
        return out


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., ClipOperator]
    description: str


def _video_sr(factor: int = 4) -> ClipOperator:
    return PerFrame("sr-avgpool", factor=factor)


def _video_inpaint(p: float = 0.5, shared: bool = False) -> ClipOperator:
    return PerFrame("inpaint-random", shared=shared, p=p)


def _video_motion(size: int = 9, intensity: float = 0.5, shared: bool = False) -> ClipOperator:
    return PerFrame("motion-blur", shared=shared, size=size, intensity=intensity)


def _temporal(width: int = 7, boundary: str = "circular") -> ClipOperator:
    return TemporalBlur(width, boundary)


def _temporal_motion(width: int = 7, boundary: str = "circular", size: int = 9,
                     intensity: float = 0.5, shared: bool = False) -> ClipOperator:
    return ClipChain([_video_motion(size, intensity, shared), TemporalBlur(width, boundary)])


CLIP_OPERATORS: dict[str, _Entry] = {
    "video-sr4": _Entry(_video_sr, "super-resolution x4 (average pooling) of every frame"),
    "video-inpaint-random": _Entry(_video_inpaint, "random inpainting, 50% of the pixels of every "
                                   "frame removed, a mask per frame"),
    "video-motion-blur": _Entry(_video_motion, "motion blur of every frame, a 9x9 kernel per "
                                "frame (shared=True: one per clip)"),
    "temporal-blur": _Entry(_temporal, "temporal deconvolution: uniform PSF of 7 frames along "
                            "time, circular"),
    "temporal-blur+motion-blur": _Entry(_temporal_motion, "per-frame motion blur, then the "
                                        "uniform temporal PSF of 7 frames"),
}
FRAMES_PREFIX = "frames:"


def list_clip_operators() -> list[tuple[str, str]]:
    """``[(name, description)]``; any image operator also works as ``frames:<name>``."""
    return [(n, e.description) for n, e in CLIP_OPERATORS.items()] + [
        (FRAMES_PREFIX + "<image operator>", "any registered image operator on every frame")]


def make_clip_operator(name: str, **settings: Any) -> ClipOperator:
    """Build the clip operator ``name`` (or ``frames:<image operator>``) with ``settings``."""
    if name.startswith(FRAMES_PREFIX):
        shared = bool(settings.pop("shared", False))
        op: ClipOperator = PerFrame(name[len(FRAMES_PREFIX):], shared=shared, **settings)
    else:
        if name not in CLIP_OPERATORS:
            raise UnknownNameError("clip operator", name,
                                   [*CLIP_OPERATORS, FRAMES_PREFIX + "<image operator>"])
        factory = CLIP_OPERATORS[name].factory
        allowed = list(inspect.signature(factory).parameters)
        bad = sorted(set(settings) - set(allowed))
        if bad:
            raise DiffinvError(f"clip operator {name!r} does not take {bad}; it takes {allowed}")
        op = factory(**settings)
    op.registry_name = name
    return op
