"""Image solvers on clips, frame by frame: the per-frame baselines of the video tables.

:class:`FrameByFrame` wraps any image solver (``make_solver("dps")``, DMPlug, DDRM, the identity
row...) into a clip solver with the clip contract of :class:`~diffinv.video.dmplug.DMPlugVideo`:
``solver(y, clip_measurement.public(), prior, seed=...) -> Result`` with ``x`` of ``y``'s rank
(a clip ``(T, C, H, W)`` or clips ``(B, T, C, H, W)``). It needs a clip operator that acts on each
frame alone (:class:`~diffinv.video.operators.PerFrame`: ``video-sr4``, ``video-inpaint-random``,
``video-motion-blur``, ``frames:<image operator>``); the ``B * T`` frames go through the image
solver as one batch of images, frame ``t`` of clip ``b`` with its own operator parameters (its
mask, its kernel), as the image measurement :func:`frames_measurement` holds them. A temporal
operator couples the frames and is refused, except for the do-nothing row (solver ``identity``),
which returns ``y`` itself wherever ``y`` has the clips' shape (temporal blur).

**Randomness.** Clip ``b`` takes generator ``g_b`` (``image_seed(seed, b)``, or the ``b``-th of
the generators given), and frame ``t`` the ``t``-th of
:func:`frame_generators(g_b, T) <diffinv.video.operators.frame_generators>`: the frame streams
DMPlugVideo draws its per-frame seeds from. So per-frame DMPlug and dmplug-video's Base variant
(``semantic=False, pixel=False``) given the same seed return the same clips (up to the rounding
of batched network calls); tests/test_video_cli.py checks it. With ``frame_seeds="shared"`` every
frame of a clip takes a copy of frame 0's generator, so each frame's run draws the same noise:
the "shared noise" zero-shot baseline (independent noise per frame makes stochastic samplers such
as DPS flicker; the same noise for every frame keeps what the sampler adds alike across frames).

The trace is the image solver's, with every per-image entry (leading size ``B * T``) reshaped to
``(B, T, ...)`` and every per-iteration log ``(iterations, B * T)`` to ``(iterations, B, T)``;
``trace["frame_seeds"]`` and ``trace["per_frame"]`` (the image solver's name) are added.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.solvers.base import Result
from diffinv.video.clips import check_clip
from diffinv.video.operators import PerFrame, frame_generators

FRAME_SEEDS = ("independent", "shared")


def frames_measurement(m: Any, y: Tensor | None = None) -> Any:
    """The image :class:`~diffinv.physics.Measurement` of the ``B * T`` frames of clip
    measurement ``m`` (a per-frame operator's): ``y`` ``(B * T, C', h, w)`` (``m.y``, or ``y``
    given as clips), the image operator, its per-frame parameters flattened the same way, the
    noise spec and seed; frame ``t`` of clip ``b`` is image ``b * T + t`` (its ``indices``). The
    hidden truth, where ``m`` holds it, goes along (``x`` flattened); a solver gets ``.public()``.
    """
    from diffinv.physics.measurement import Measurement

    op = m.make_operator()
    if not isinstance(op, PerFrame):
        raise DiffinvError(f"clip operator {m.operator!r} is not applied frame by frame "
                           f"({op.description}): an image solver cannot restore it frame by frame"
                           "; use dmplug-video")
    y5 = m.y if y is None else y
    y5 = y5[None] if y5.ndim == 4 else y5
    B, T = y5.shape[:2]
    params = {}
    for k, v in m.params.items():
        v = v.to(y5.device)
        if v.ndim < 2 or v.shape[1] != T or v.shape[0] not in (1, B):
            raise ShapeError(f"parameter {k!r} of shape {tuple(v.shape)} does not hold one value "
                             f"per frame of {B} clip(s) of {T} frames")
        params[k] = v.expand(B, *v.shape[1:]).reshape(B * T, *v.shape[2:])
    inner = op.op
    x = None if m.x is None else m.x.reshape(B * T, *m.x.shape[2:])
    return Measurement(
        y=y5.reshape(B * T, *y5.shape[2:]), operator=str(getattr(inner, "registry_name", "")),
        config=inner.config(), params=params, noise=m.noise, seed=m.seed, domain=m.domain,
        indices=list(range(B * T)), source=m.source, blind=False, x=x, operator_instance=inner)


def frame_seed_generators(seed: int | Sequence[torch.Generator], clips: int, frames: int,
                          mode: str = "independent") -> list[torch.Generator]:
    """``clips * frames`` generators, frame ``t`` of clip ``b`` at ``b * frames + t`` (module
    docstring): the frame streams of each clip's generator, or (``"shared"``) copies of its
    frame 0's."""
    from diffinv.seeding import batch_generators

    if mode not in FRAME_SEEDS:
        raise DiffinvError(f"frame_seeds must be one of {', '.join(FRAME_SEEDS)}, got {mode!r}")
    out: list[torch.Generator] = []
    for g in batch_generators(seed, clips):
        gens = frame_generators(g, frames)
        if mode == "shared":
            state = gens[0].get_state()
            gens = []
            for _ in range(frames):
                c = torch.Generator(device="cpu")
                c.set_state(state.clone())
                gens.append(c)
        out.extend(gens)
    return out


def _reshape_trace(trace: dict[str, Any], B: int, T: int) -> dict[str, Any]:
    n = B * T
    out: dict[str, Any] = {}
    for k, v in trace.items():
        if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n:
            v = v.reshape(B, T, *v.shape[1:])
        elif isinstance(v, Tensor) and v.ndim == 2 and v.shape[1] == n:
            v = v.reshape(v.shape[0], B, T)
        out[k] = v
    return out


def _takes_truth(solver: Any) -> bool:
    try:
        return "truth" in inspect.signature(solver.__call__).parameters
    except (TypeError, ValueError):
        return False


class FrameByFrame:
    """An image solver applied to every frame of a clip measurement (module docstring)."""

    def __init__(self, solver: Any, frame_seeds: str = "independent"):
        if not callable(solver) or not hasattr(solver, "name"):
            raise DiffinvError(f"FrameByFrame wraps an image solver (diffinv.solvers.make_solver),"
                               f" got {type(solver).__name__}")
        if frame_seeds not in FRAME_SEEDS:
            raise DiffinvError(f"frame_seeds must be one of {', '.join(FRAME_SEEDS)}, got "
                               f"{frame_seeds!r}")
        self.solver = solver
        self.frame_seeds = frame_seeds
        self.name = f"{solver.name} per frame" + (" (shared noise)" if frame_seeds == "shared"
                                                   else "")

    @property
    def progress(self) -> bool:
        return bool(getattr(self.solver, "progress", False))

    @progress.setter
    def progress(self, value: bool) -> None:
        if hasattr(self.solver, "progress"):
            self.solver.progress = value

    def check_operator(self, op: Any) -> None:
        """Refuse a clip operator this solver cannot restore frame by frame, before any work."""
        if not isinstance(op, PerFrame):
            if self.solver.name == "identity":
                return  # y itself, where it has the clips' shape (checked at the call)
            raise DiffinvError(f"solver {self.solver.name!r} works frame by frame and needs a "
                               f"clip operator that acts on each frame alone; "
                               f"{getattr(op, 'registry_name', type(op).__name__)!r} "
                               f"({op.description}) couples the frames: use dmplug-video")
        check = getattr(self.solver, "check_operator", None)
        if check is not None:
            check(op.op)

    def __call__(self, y: Tensor, physics: Any, prior: Any,
                 seed: int | Sequence[torch.Generator] = 0, *,
                 truth: Tensor | None = None) -> Result:
        """Solve every frame; ``truth`` (clips of ``y``'s rank) reaches the image solver only if
        its call takes one (DMPlug: evaluation only), flattened to frames."""
        from diffinv.video.measurement import ClipMeasurement

        if not isinstance(physics, ClipMeasurement):
            raise DiffinvError(f"a per-frame clip solver needs a clip measurement "
                               f"(diffinv.video.measure_clip), got {type(physics).__name__}")
        if physics.has_truth:
            raise DiffinvError("the clip measurement given to the solver carries the hidden "
                               "truth (the clean clip or its flow), which a solver must never "
                               "see: pass measurement.public()")
        check_clip(y, "y", min_frames=1)
        single = y.ndim == 4
        y5 = y[None] if single else y
        op = physics.make_operator()
        op.check_measurement(y5)
        x_shape = tuple(op.in_shape(y5.shape))
        B, T = x_shape[:2]
        self.check_operator(op)
        if not isinstance(op, PerFrame):  # the identity row on a temporal operator
            if tuple(y5.shape) != x_shape:
                raise DiffinvError(f"the identity row needs y of the clips' shape {x_shape}; "
                                   f"operator {physics.operator!r} gives {tuple(y5.shape)}")
            x = y5.detach().float().clone()
            return Result(x=x[0] if single else x, nfe=0, seconds=0.0,
                          trace={"estimate": "y", "frame_seeds": self.frame_seeds,
                                 "per_frame": self.solver.name})
        fm = frames_measurement(physics, y5)
        gens = frame_seed_generators(seed, B, T, self.frame_seeds)
        kwargs = {}
        if truth is not None and _takes_truth(self.solver):
            t5 = truth[None] if truth.ndim == 4 else truth
            if tuple(t5.shape) != x_shape:
                raise ShapeError(f"truth of shape {tuple(truth.shape)} does not match the clips "
                                 f"{x_shape} y was made from")
            kwargs["truth"] = t5.reshape(B * T, *t5.shape[2:]).to(y5)
        res = self.solver(fm.y, fm.public(), prior, seed=gens, **kwargs)
        x = res.x.reshape(B, T, *res.x.shape[1:])
        trace = _reshape_trace(dict(res.trace), B, T)
        trace.update(frame_seeds=self.frame_seeds, per_frame=self.solver.name)
        return Result(x=x[0] if single else x, nfe=res.nfe, seconds=res.seconds, trace=trace)


#: the video solver's name (every other solver name is an image solver run frame by frame)
VIDEO_SOLVER = "dmplug-video"


def frame_operator_name(op: Any) -> str | None:
    """The image operator's registry name of a per-frame clip operator (what presets are keyed
    by), else None."""
    if not isinstance(op, PerFrame):
        return None
    return str(getattr(op.op, "registry_name", "")) or None


def make_clip_solver(name: str, /, *, operator: Any = None, preset: str | None = None,
                     frame_seeds: str | None = None, **params: Any) -> Any:
    """A clip solver by name: ``"dmplug-video"`` (:class:`~diffinv.video.dmplug.DMPlugVideo` with
    ``params``), or image solver ``name`` (:func:`diffinv.solvers.make_solver` with ``preset``
    looked up for the image operator of the clip ``operator``, and ``params``) run frame by frame
    (:class:`FrameByFrame`, ``frame_seeds`` default ``"independent"``). With ``operator`` the
    solver is checked against it (a temporal operator refuses per-frame solvers but the identity
    row; an SVD solver needs an operator with an SVD). Unknown names and parameters are refused,
    listing the known ones."""
    from diffinv.solvers.base import check_parameters, make_solver

    if name == VIDEO_SOLVER:
        from diffinv.video.dmplug import DMPlugVideo

        if frame_seeds is not None:
            raise DiffinvError("frame_seeds is for image solvers run frame by frame; dmplug-video "
                               "draws its seeds itself (semantic=True: one shared seed per clip)")
        if preset is not None:
            raise DiffinvError(f"presets hold the image solvers' tuned settings; {VIDEO_SOLVER} "
                               "has none (give its parameters)")
        check_parameters(name, DMPlugVideo, params)
        try:
            solver = DMPlugVideo(**params)
        except (TypeError, ValueError) as e:
            raise DiffinvError(f"bad parameters for solver {name!r}: {e}") from e
        if operator is not None and operator.blind:
            raise DiffinvError("dmplug-video does not estimate operator parameters: blind clip "
                               "operators are not supported")
        return solver
    from diffinv.errors import UnknownNameError
    from diffinv.solvers.base import list_solvers

    names = [n for n, _, _ in list_solvers()]
    if name not in names:
        raise UnknownNameError("clip solver", name, [VIDEO_SOLVER, *names])
    inner = frame_operator_name(operator) if operator is not None else None
    solver = FrameByFrame(make_solver(name, preset=preset, operator=inner, **params),
                          frame_seeds or "independent")
    if operator is not None:
        solver.check_operator(operator)
    return solver


__all__ = ["FRAME_SEEDS", "VIDEO_SOLVER", "FrameByFrame", "frame_operator_name",
           "frame_seed_generators", "frames_measurement", "make_clip_solver"]
