"""Job kind "video-restore": measure clips with known motion, restore them, score each clip.

Grid axes: ``methods``, ``tasks`` and ``priors``; the unit is one clip (``n_clips`` per cell).

* a **task** is a clip operator (``operator``, a :func:`diffinv.video.list_clip_operators` name
  such as ``"video-sr4"`` or ``"frames:gaussian-blur"``; default: the task's name), a ``noise``
  spec (required) and the operator's settings (every other key, e.g. ``width = 5`` of
  ``temporal-blur``);
* a **method** is ``"dmplug-video"`` with its parameters (:class:`diffinv.video.dmplug.
  DMPlugVideo`: ``semantic``, ``pixel``, ``pixel_weight``, ``iterations``, ...), or any image
  solver name with its parameters, run frame by frame (:class:`diffinv.video.perframe.
  FrameByFrame`; ``frame_seeds = "shared"`` gives every frame of a clip the same noise, the
  shared-noise baseline; ``preset = "tuned32"`` takes the values tuned for the image operator of
  the task, part of the row identity); ``"identity"`` frame by frame is the do-nothing row (``A^+
  y`` per frame where sizes differ, else ``y``); ``"truth"`` is the ground truth itself, scored
  like a method: the warping-error floor row (the WE of a perfect restoration: the
  interpolation error of the warp; its PSNR is ``inf``);
* a **prior** is a name or a table with ``name``, ``path``, ``precision``, as for "restore".

``[run] dataset = "fashion32-video:test"`` names a clip data set and split
(:mod:`diffinv.video.data`): clip ``i`` of a cell animates image ``i`` of the split along a
trajectory drawn from ``clip_generator(clip_seed, i)`` (``[run] clip_seed``, default 0), with
``[run] frames`` frames (default 8): the clip ``diffinv measure --dataset
fashion32-video:test:i --frames 8 --clip-seed 0`` makes, with its exact flow.

For a batch of clip indices I of a cell (method M, task T, prior P):

1. ``x`` (B, T, C, H, W) = clips I with their exact flow and validity mask;
2. ``m = measure_clip(x, T.operator, T.noise, seed, I, settings=...)``: clip i's operator
   parameters and noise come from the per-clip stream of (run seed, i), so every method sees the
   same measurement, and ``diffinv measure ... --seed SEED`` reproduces it;
3. ``x_hat = M(m.y, m.public(), prior, seed=[g_i])``, ``g_i`` seeded by
   ``image_seed(derived_seed(seed, "solver"), i)``, the same for every method: per-frame DMPlug
   and dmplug-video's Base variant draw the same per-frame seeds from it (a paired comparison);
4. metrics, one value per clip: an image metric of :mod:`diffinv.metrics` (``psnr``, ``ssim``,
   ``st-lpips``, ...) is computed on every frame against the true frame and averaged over the
   frames (the per-frame values go in the row's ``extra``, ``"<metric>_frames"``); ``"we"`` is the
   warping error (Lai et al. 2018, :func:`diffinv.video.warping_error`, on the [0, 1] scale, not
   x 1e-2) of ``x_hat`` under the clip's exact flow and mask; ``"we-estimated"`` the same under
   the flow OpenCV DIS estimates on the true clip (what a video without known motion allows).

NFE is the solver's count for the batch (batched network calls count once; a frame-by-frame
solver sends all B x T frames through each call); s/clip is the batch's solver seconds over its
clips. Rows, resume, shards and reports are the runner's, as for every kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import REQUIRED, RunContext, UnitResult, register_job_kind
from diffinv.bench.kinds.common import (
    AXIS_HELP,
    PRESET,
    cached_prior,
    call_until_first_module,
    cell_name,
    derived_seed,
    prior_source,
    rehearsal_cells,
    resolve_identity,
    task_parts,
)
from diffinv.bench.spec import Cell, Entry
from diffinv.errors import DiffinvError

KIND = "video-restore"
#: the method that returns the true clip: the warping-error floor row
TRUTH = "truth"
#: a method key: each frame's random stream ("independent") or the same for all ("shared")
FRAME_SEEDS = "frame_seeds"
WE, WE_ESTIMATED = "we", "we-estimated"
METRICS = ("psnr", "ssim", WE)


# ------------------------------------------------------------------ names and options
def parse_clip_dataset(spec: str) -> tuple[str, str, str, str]:
    """``"fashion32-video:test"`` -> ``(name, split, image data set, motion)``."""
    from diffinv.video.data import VIDEO_SETS

    parts = str(spec).split(":")
    if len(parts) != 2 or not all(parts):
        raise BenchConfigError(f"[run] dataset {spec!r}: expected a clip data set and a split, "
                               "e.g. fashion32-video:test")
    if parts[0] not in VIDEO_SETS:
        from diffinv.errors import UnknownNameError

        raise UnknownNameError("clip data set", parts[0], list(VIDEO_SETS))
    base, motion = VIDEO_SETS[parts[0]]
    return parts[0], parts[1], base, motion


def _frames(ctx: RunContext) -> int:
    from diffinv.video.data import MAX_FRAMES

    t = ctx.options["frames"]
    if isinstance(t, bool) or not isinstance(t, int) or not 2 <= t <= MAX_FRAMES:
        raise BenchConfigError(f"[run] frames must be an integer in [2, {MAX_FRAMES}], got {t!r}")
    return t


def _clip_seed(ctx: RunContext) -> int:
    s = ctx.options["clip_seed"]
    if isinstance(s, bool) or not isinstance(s, int):
        raise BenchConfigError(f"[run] clip_seed must be an integer, got {s!r}")
    return s


def method_parts(method: Entry) -> tuple[dict[str, Any], str | None, str | None]:
    """``(solver parameters, preset, frame_seeds)`` of a method entry."""
    params = dict(method.params)
    preset = params.pop(PRESET, None)
    seeds = params.pop(FRAME_SEEDS, None)
    if method.name == TRUTH and (params or preset or seeds):
        raise BenchConfigError(f"method {method.label!r}: {TRUTH!r} (the true clip, the WE floor "
                               "row) takes no parameters")
    if preset is not None and not isinstance(preset, str):
        raise BenchConfigError(f"method {method.label!r}: {PRESET} must be a preset name")
    return params, preset, seeds


def _clip_operator(task: Entry) -> tuple[Any, str, dict[str, Any], str]:
    from diffinv.video.operators import make_clip_operator

    name, settings, noise = task_parts(task)
    try:
        op = make_clip_operator(name, **settings)
    except DiffinvError as e:
        raise BenchConfigError(f"task {task.label!r}: {e}") from None
    if op.blind:
        raise BenchConfigError(f"task {task.label!r}: blind clip operators are not supported")
    return op, name, settings, noise


def _solver(method: Entry, op: Any = None) -> Any:
    from diffinv.video.perframe import make_clip_solver

    params, preset, seeds = method_parts(method)
    return make_clip_solver(method.name, operator=op, preset=preset, frame_seeds=seeds, **params)


def _split(ctx: RunContext) -> Any:
    from diffinv.data import load_split

    _, split, base, _ = parse_clip_dataset(ctx.options["dataset"])
    return ctx.cached(f"video-data:{base}:{split}", lambda: load_split(base, split))


def validate(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Every name, option and (method, task) pair, before any work."""
    from diffinv.data import SPLITS
    from diffinv.errors import UnknownNameError
    from diffinv.metrics import get_metric
    from diffinv.physics import make_noise

    name, split, _, _ = parse_clip_dataset(ctx.options["dataset"])
    if split not in SPLITS:
        raise UnknownNameError("split", split, list(SPLITS))
    T = _frames(ctx)
    _clip_seed(ctx)
    for m in ctx.metrics:
        if m not in (WE, WE_ESTIMATED):
            get_metric(m)
    seen: set[tuple[str, ...]] = set()
    for cell in cells:
        method, task = cell["method"], cell["task"]
        op, _, _, noise = _clip_operator(task)
        make_noise(noise)
        prior_source(cell["prior"])
        if (method.digest, task.digest) in seen:
            continue
        seen.add((method.digest, task.digest))
        try:
            op.out_shape((1, T, 1, 32, 32))  # e.g. a circular temporal PSF wider than the clip
            if method.name != TRUTH:
                _solver(method, op)
            else:
                method_parts(method)
        except DiffinvError as e:
            raise BenchConfigError(f"{cell_name(cell)}: {e}") from None
    data = _split(ctx)
    most = max(c.target for c in cells)
    if most > len(data):
        raise BenchConfigError(f"n_clips {most} exceeds the {len(data)} images of {name}:{split}")


def resolve(ctx: RunContext, axis: str, entry: Entry, cell: Cell | None = None) -> dict[str, Any]:
    """A prior's SHA-256; a method's preset values for the task's image operator."""
    if axis == "prior":
        return resolve_identity(ctx, axis, entry, cell)
    if axis == "method" and PRESET in entry.params and cell is not None:
        from diffinv.solvers.presets import preset_params
        from diffinv.video.perframe import frame_operator_name

        op = _clip_operator(cell["task"])[0]
        name = str(entry.params[PRESET])
        return {"preset": name, "params": preset_params(name, entry.name, frame_operator_name(op))}
    return {}


# ------------------------------------------------------------------ a batch
def clips_batch(ctx: RunContext, indices: Sequence[int]) -> Any:
    """Clips ``indices`` of the run's clip data set (:class:`~diffinv.video.data.ClipSet`)."""
    import torch

    from diffinv.video.data import make_clips

    name, split, _, motion = parse_clip_dataset(ctx.options["dataset"])
    data = _split(ctx)
    if max(indices) >= len(data):
        raise DiffinvError(f"clip index {max(indices)} is out of range: {name}:{split} has "
                           f"{len(data)} images")
    idx = [int(i) for i in indices]
    t = torch.as_tensor(idx, dtype=torch.long)
    return make_clips(data.images[t], idx, motion=motion, frames=_frames(ctx),
                      seed=_clip_seed(ctx), name=name, split=split, labels=data.labels[t])


def _setup(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> dict[str, Any]:
    from diffinv.seeding import image_generators
    from diffinv.video.measurement import measure_clip

    method, task = cell["method"], cell["task"]
    prior = cached_prior(ctx, cell["prior"])
    cs = clips_batch(ctx, indices)
    x = cs.clips.to(ctx.device)
    op, op_name, settings, noise = _clip_operator(task)
    m = measure_clip(x, op_name, noise, ctx.seed, list(indices), settings=settings,
                     fps=cs.fps, domain=str(getattr(prior, "domain", "image")),
                     source=f"{ctx.options['dataset']}", flow=cs.flows.to(ctx.device),
                     valid=cs.valid.to(ctx.device))
    solver = None if method.name == TRUTH else _solver(method, op)
    solver_seed = derived_seed(ctx.seed, "solver")
    return {"x": x, "m": m, "prior": prior, "solver": solver, "solver_seed": solver_seed,
            "gens": image_generators(solver_seed, list(indices))}


def score(metrics: Sequence[str], x_hat: Any, x: Any, flow: Any, valid: Any
          ) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """``({metric: one value per clip}, {metric: per-frame values per clip})`` (module
    docstring, step 4)."""
    from diffinv.metrics import get_metric
    from diffinv.video.metrics import warping_error, warping_error_estimated

    B, T = x.shape[:2]
    per_clip: dict[str, list[float]] = {}
    frames: dict[str, list[list[float]]] = {}
    for name in metrics:
        if name == WE:
            per_clip[name] = warping_error(x_hat, flow, valid).double().reshape(-1).tolist()
        elif name == WE_ESTIMATED:
            per_clip[name] = [float(warping_error_estimated(x_hat[b], x[b])) for b in range(B)]
        else:
            v = get_metric(name)(x_hat.reshape(B * T, *x_hat.shape[2:]),
                                 x.reshape(B * T, *x.shape[2:]))
            v = v.detach().double().cpu().reshape(B, T)
            frames[name] = v.tolist()
            per_clip[name] = v.mean(1).tolist()
    return per_clip, frames


def run(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> list[UnitResult]:
    import torch

    s = _setup(ctx, cell, indices)
    x, m = s["x"], s["m"]
    B = x.shape[0]
    cuda = torch.device(ctx.device).type == "cuda"
    extra: dict[str, Any] = {"solver_seed": s["solver_seed"], "frames": int(x.shape[1])}
    if s["solver"] is None:  # the true clip: the WE floor
        x_hat, nfe, seconds = x, 0.0, 0.0
    else:
        if cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        res = s["solver"](m.y, m.public(), s["prior"], seed=s["gens"])
        x_hat, nfe, seconds = res.x.reshape(x.shape), float(res.nfe), float(res.seconds)
        extra["batch_solver_seconds"] = seconds
        if cuda:
            extra["peak_memory_mb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    per_clip, frames = score(ctx.metrics, x_hat.float(), x, m.flow, m.valid)
    return [UnitResult(metrics={k: per_clip[k][j] for k in ctx.metrics}, nfe=nfe,
                       seconds=seconds / B,
                       extra={**extra, **{f"{k}_frames": v[j] for k, v in frames.items()}})
            for j in range(B)]


def rehearse(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """Every (method, task, prior) with work left, on clip 0, up to the solver's first network or
    operator call: what a solver checks on entry (the prior's image size, a temporal PSF wider
    than the clip, ...) stops the run before its first row, naming the cell."""
    for cell, where in rehearsal_cells(cells):
        if cell["method"].name == TRUTH:
            continue
        try:
            s = _setup(ctx, cell, [0])
        except DiffinvError as e:
            raise BenchConfigError(f"{where}: {e}") from None
        call_until_first_module(where, s["solver"], s["m"].y, s["m"].public(), s["prior"],
                                seed=s["gens"])


register_job_kind(
    KIND, run,
    axes=["method", "task", "prior"], replicate="clip", target_key="n_clips",
    options={"dataset": REQUIRED, "frames": 8, "clip_seed": 0},
    identity=("dataset", "frames", "clip_seed"), metrics=METRICS, statistic="mean",
    validate=validate, resolve=resolve, rehearse=rehearse,
    description="measure clips with known motion, restore them (dmplug-video, or an image solver "
                "frame by frame), score each clip (per-frame metrics averaged, warping error)",
    help={**AXIS_HELP,
          "method": "\"dmplug-video\" with its parameters; any other solver name runs frame by "
                    f"frame ({FRAME_SEEDS} = \"shared\": the same noise in every frame; {PRESET} = "
                    "\"tuned32\"); \"identity\": the do-nothing row; \"truth\": the true clip (the "
                    "warping-error floor)",
          "task": "a table with operator (a clip operator: video-sr4, video-inpaint-random, "
                  "temporal-blur, frames:NAME, ...; default: the task's name), noise (required) "
                  "and the operator's settings",
          "dataset": "CLIPSET:SPLIT, e.g. \"fashion32-video:test\"; clip i animates image i of "
                     "the split",
          "frames": "frames per clip",
          "clip_seed": "seed of the clips' motion (clip i from (clip_seed, i))",
          "n_clips": "clips per cell: clips 0 .. n_clips - 1",
          "metrics": f"diffinv.metrics image metrics (averaged over the frames), \"{WE}\" "
                     f"(warping error, exact flow), \"{WE_ESTIMATED}\" (flow estimated on the "
                     "truth)"},
)
