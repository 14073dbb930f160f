"""A clip measurement ``Y = A(X) + N`` with what made it; seeded creation, saving and exact loading.

The clip counterpart of :mod:`diffinv.physics.measurement`. ``measure_clip(x, "video-sr4",
"gaussian:0.01", seed=3)`` draws, for clip ``b`` (data-set index ``indices[b]``), the clip
operator's parameters and then the noise from two child generators of the per-clip generator
``image_seed(seed, indices[b])`` (:mod:`diffinv.seeding`): a batch of clips gives the same
measurement as its clips one by one, and any clip can be re-measured alone.

A :class:`ClipMeasurement` always holds a *batch* of clips: ``y`` is ``(B, T', C', h, w)`` (a
single clip ``(T, C, H, W)`` given to :func:`measure_clip` is stored with ``B = 1``). The operator
is named in the clip-operator registry (:func:`~diffinv.video.operators.make_clip_operator`) with
its ``settings`` (the keyword arguments of ``make_clip_operator``), so a saved record rebuilds it.

What a solver may see (:meth:`ClipMeasurement.public`): ``y``, the operator's name and settings,
the per-clip parameters (masks, kernels of every frame), the noise spec, the seed, the frame rate.
The hidden truth is the clean clip ``x`` and, when the clips come with one (generated clips,
:mod:`diffinv.video.data`), its exact ``flow`` and ``valid`` mask, kept for evaluation (the warping
error) only.

On disk (:func:`save_clip_measurement`), a folder with

* ``spec.json``: format, operator, settings, the operator's config (for reading only), noise,
  seed, domain, indices, frame rate, shapes;
* ``measurement.safetensors``: ``y`` and the public per-clip parameters ``param.NAME``;
* ``frames/y_000.png`` ...: frame ``s`` of every clip of the batch side by side (for eyes only,
  :func:`~diffinv.physics.measurement.png_view`), and ``y.gif``, the same grids animated at the
  clip's frame rate;
* ``truth.safetensors``: the hidden truth ``x`` (and ``flow``, ``valid`` when known).

It is written all or nothing, with the rules of image measurements: a temporary sibling folder
renamed into place (:func:`diffinv.fileio.atomic_folder`), an existing non-empty folder replaced
only with ``overwrite`` and only if diffinv wrote it, the inputs never replaced
(:func:`diffinv.checks.check_output_folder`). :func:`load_clip_measurement` reads it back exactly,
checking the record first.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError, ShapeError
from diffinv.physics.measurement import check_spec_schema, is_int, is_str, list_of
from diffinv.video.clips import check_clip, check_flow
from diffinv.video.data import DEFAULT_FPS
from diffinv.video.operators import ClipOperator, make_clip_operator

FORMAT = "diffinv-clip-measurement"
VERSION = 1
SPEC_FILE, TENSOR_FILE, TRUTH_FILE, GIF_FILE, FRAMES_DIR = (
    "spec.json", "measurement.safetensors", "truth.safetensors", "y.gif", "frames")


@dataclass
class ClipMeasurement:
    """``y`` (B, T', C', h, w) and what made it; ``x``, ``flow``, ``valid``: the hidden truth."""

    y: Tensor
    operator: str
    settings: dict[str, Any]
    params: dict[str, Tensor]
    noise: str
    seed: int
    indices: list[int]
    fps: float = DEFAULT_FPS
    domain: str = "clip"
    source: str | None = None
    x: Tensor | None = None
    flow: Tensor | None = None
    valid: Tensor | None = None
    #: the operator object when it was given as one (not by registry name): in memory only
    operator_instance: ClipOperator | None = None

    def make_operator(self) -> ClipOperator:
        """Rebuild the clip operator from its registry name and settings."""
        if self.operator_instance is not None:
            return self.operator_instance
        return make_clip_operator(self.operator, **self.settings)

    def make_noise(self):
        from diffinv.physics.noise import make_noise

        return make_noise(self.noise)

    def public(self) -> ClipMeasurement:
        """A copy without the hidden truth (clip, flow, mask): what a solver receives."""
        return replace(self, x=None, flow=None, valid=None)

    @property
    def has_truth(self) -> bool:
        return self.x is not None or self.flow is not None or self.valid is not None


def _child_generators(seed: int, indices: list[int]) -> tuple[list, list]:
    """Per clip, two independent generators (operator parameters, noise) from its seed."""
    from diffinv.seeding import image_generators

    op_gens, noise_gens = [], []
    for g in image_generators(seed, indices):
        for out, s in zip((op_gens, noise_gens),
                          torch.randint(0, 2 ** 62, (2,), generator=g).tolist(), strict=True):
            out.append(torch.Generator().manual_seed(int(s)))
    return op_gens, noise_gens


def _check_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    settings = dict(settings or {})
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"clip operator settings must be plain JSON values (numbers, strings, "
                           f"lists) so that a saved record can rebuild the operator: {e}") from None
    return settings


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) \
            or fps <= 0:
        raise DiffinvError(f"fps must be a finite number > 0, got {fps!r}")
    return float(fps)


def measure_clip(x: Tensor, operator: str | ClipOperator, noise: str, seed: int,
                 indices: list[int] | None = None, *, settings: dict[str, Any] | None = None,
                 params: dict[str, Tensor] | None = None, fps: float = DEFAULT_FPS,
                 domain: str = "clip", source: str | None = None, flow: Tensor | None = None,
                 valid: Tensor | None = None) -> ClipMeasurement:
    """Make ``Y = A(X; theta) + N`` for clean clip(s) ``x`` with per-clip seeded ``theta``, ``N``.

    ``x``: a clip ``(T, C, H, W)`` or clips ``(B, T, C, H, W)`` in [-1, 1] (converted to float32);
    ``operator``: a clip-operator name (``list_clip_operators()``, ``"frames:<image operator>"``)
    built with ``settings``, or a :class:`ClipOperator` (the measurement then lives in memory
    only); ``noise``: a spec such as ``"gaussian:0.01"``; ``seed``: an integer; ``indices``: the
    clips' data-set indices (default ``0 .. B-1``), which select their random streams; ``params``:
    per-clip operator parameters to use instead of drawing them; ``flow``/``valid``: the clips'
    reference flow and mask, kept with the hidden truth for the warping error. Blind clip operators
    are refused (no blind video solver yet).
    """
    from diffinv.checks import check_image_range
    from diffinv.physics.noise import make_noise
    from diffinv.seeding import check_seed

    check_clip(x, "x")
    x5 = (x[None] if x.ndim == 4 else x).detach()
    if x5.dtype != torch.float32:
        x5 = x5.float()
    check_image_range(x5.flatten(0, 1), "x")
    if isinstance(operator, str):
        settings = _check_settings(settings)
        op = make_clip_operator(operator, **settings)
        name, instance = operator, None
    elif isinstance(operator, ClipOperator):
        if settings:
            raise DiffinvError("settings are for a clip operator given by name")
        op, settings, instance = operator, {}, operator
        name = f"custom:{getattr(operator, 'registry_name', type(operator).__name__)}"
    else:
        raise DiffinvError(f"operator must be a clip-operator name (diffinv.video."
                           f"list_clip_operators()) or a ClipOperator; got {type(operator).__name__}"
                           " (image operators apply to images: wrap one as 'frames:<name>')")
    if op.blind:
        raise DiffinvError(f"clip operator {name!r} is blind: blind clip measurements are not "
                           "supported (no video solver estimates operator parameters)")
    nm = make_noise(noise)
    seed = check_seed(seed)
    fps = _check_fps(fps)
    B = x5.shape[0]
    indices = list(range(B)) if indices is None else [int(i) for i in indices]
    if len(indices) != B:
        raise ShapeError(f"got {len(indices)} indices for a batch of {B} clips")
    truth_flow = truth_valid = None
    if flow is not None:
        truth_flow = check_flow(flow[None] if flow.ndim == 4 else flow, x5.shape).float().clone()
    if valid is not None:
        truth_valid = check_flow(valid[None] if valid.ndim == 4 else valid, x5.shape, "valid",
                                 channels=1).float().clone()
    op_gens, noise_gens = _child_generators(seed, indices)
    if params is None:
        theta = op.draw_params(op_gens, x5.shape[1:], device=x5.device, dtype=x5.dtype)
    else:
        theta = {}
        for k, v in params.items():
            v = torch.as_tensor(v).to(x5.device)
            nd = op.param_clip_ndim(k)
            if nd is not None and v.ndim == nd:
                v = v[None]
            if nd is not None and v.ndim == nd + 1 and v.shape[0] == 1 and B > 1:
                v = v.expand(B, *v.shape[1:])
            theta[k] = v.clone()
    with torch.no_grad():
        ax = op(x5, **theta)  # validates the parameters
        y = nm.sample(ax, noise_gens)
    for k, v in theta.items():
        if v.ndim == 0 or v.shape[0] != B:
            raise ShapeError(f"parameter {k!r} must hold one value per clip (leading size {B}); "
                             f"got shape {tuple(v.shape)}")
    return ClipMeasurement(
        y=y, operator=name, settings=settings, params={k: v.detach() for k, v in theta.items()},
        noise=nm.spec(), seed=seed, indices=indices, fps=fps, domain=domain, source=source,
        x=x5.clone(), flow=truth_flow, valid=truth_valid, operator_instance=instance)


# ------------------------------------------------------------------ saving
def _frame_grids(y: Tensor, image_like: bool) -> list[Tensor]:
    """Per frame ``s``: the ``B`` clips' frame ``s`` side by side, ``(C, H', W')`` in [-1, 1]."""
    from diffinv.data.images import make_grid
    from diffinv.physics.measurement import png_view

    B, T = y.shape[:2]
    v = png_view(y.reshape(B * T, *y.shape[2:]), image_like).reshape(B, T, *y.shape[2:])
    if v.shape[2] not in (1, 3):
        v = v[:, :, :1]
    return [make_grid(v[:, s], ncol=min(8, B), value=1.0) for s in range(T)]


def _write_views(y: Tensor, folder: Path, fps: float, image_like: bool) -> None:
    from PIL import Image

    from diffinv.data.images import save_image, to_uint8

    grids = _frame_grids(y, image_like)
    scale = max(1, 128 // max(y.shape[-2:]))
    (folder / FRAMES_DIR).mkdir()
    ims = []
    for s, g in enumerate(grids):
        save_image(g, folder / FRAMES_DIR / f"y_{s:03d}.png", scale=scale)
        im = Image.fromarray(to_uint8(g))
        ims.append(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST))
    ims[0].save(folder / GIF_FILE, save_all=True, append_images=ims[1:],
                duration=max(20, round(1000 / fps)), loop=0)


def save_clip_measurement(m: ClipMeasurement, directory: str | os.PathLike, *,
                          overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
                          ) -> Path:
    """Write ``m`` to ``directory`` (module docstring), all or nothing; returns the folder.

    An existing non-empty ``directory`` is an error unless ``overwrite``, and even then it is
    replaced only if diffinv wrote it; ``inputs`` and the folders holding them are never replaced.
    """
    from safetensors.torch import save_file

    from diffinv.checks import check_output_folder
    from diffinv.fileio import atomic_folder

    if m.operator_instance is not None or m.operator.startswith("custom:"):
        raise DiffinvError(f"a clip measurement made with an operator object ({m.operator}) "
                           "cannot be saved: measure with a clip-operator name and settings "
                           "(diffinv.video.list_clip_operators()) so the record can rebuild it")
    op = m.make_operator()  # settings that do not make the operator fail before anything
    settings = _check_settings(m.settings)
    try:
        config = json.loads(json.dumps(op.config(), default=str))
    except (TypeError, ValueError):
        config = None
    inputs = list(inputs)
    out = check_output_folder(directory, overwrite=overwrite, inputs=inputs)
    with atomic_folder(out, overwrite=overwrite, inputs=inputs) as tmp:
        tensors = {"y": m.y.detach().cpu().contiguous()}
        tensors.update({f"param.{k}": v.detach().cpu().contiguous() for k, v in m.params.items()})
        save_file(tensors, tmp / TENSOR_FILE)
        truth = {k: v.detach().cpu().contiguous() for k, v in
                 (("x", m.x), ("flow", m.flow), ("valid", m.valid)) if v is not None}
        if truth:
            save_file(truth, tmp / TRUTH_FILE)
        spec = {
            "format": FORMAT, "version": VERSION, "operator": m.operator, "settings": settings,
            "config": config, "noise": m.noise, "seed": m.seed, "domain": m.domain,
            "indices": m.indices, "source": m.source, "fps": m.fps,
            "y_shape": list(m.y.shape), "dtype": str(m.y.dtype).removeprefix("torch."),
            "params": sorted(m.params), "hidden_truth": TRUTH_FILE if truth else None,
            "truth": sorted(truth),
        }
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        _write_views(m.y, tmp, m.fps, bool(getattr(op, "image_like", True)))
    return out


# ------------------------------------------------------------------ loading
_ints, _strs = list_of(is_int), list_of(is_str)


#: the keys of ``spec.json``: (what the value must be, its test, required)
SPEC_SCHEMA: dict[str, tuple[str, Any, bool]] = {
    "format": ("a string", lambda v: isinstance(v, str), True),
    "version": ("an integer", is_int, True),
    "operator": ("a clip-operator name", lambda v: isinstance(v, str), True),
    "settings": ("a JSON object of operator settings", lambda v: isinstance(v, dict), True),
    "noise": ("a noise spec such as 'gaussian:0.01'", lambda v: isinstance(v, str), True),
    "seed": ("an integer", is_int, True),
    "indices": ("a list of integers", _ints, True),
    "fps": ("a number > 0", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0, True),
    "y_shape": ("a list of 5 integers (B, T, C, H, W)", lambda v: _ints(v) and len(v) == 5, True),
    "params": ("a list of parameter names", _strs, True),
    "domain": ("a string", lambda v: isinstance(v, str), False),
    "source": ("a string or null", lambda v: v is None or isinstance(v, str), False),
    "hidden_truth": ("a file name or null", lambda v: v is None or isinstance(v, str), False),
    "truth": ("a list of tensor names", _strs, False),
}


def _read_spec(d: Path) -> dict[str, Any]:
    if not d.exists():
        raise MissingAssetError(f"clip measurement folder {d} does not exist")
    if not d.is_dir():
        raise MissingAssetError(f"{d} is a file, not a clip measurement folder")
    path = d / SPEC_FILE
    if not path.is_file():
        raise MissingAssetError(f"{d} is not a clip measurement folder: it has no {SPEC_FILE} "
                                "(save_clip_measurement writes one)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        hint = (" (an image measurement: load it with diffinv.physics.load_measurement)"
                if isinstance(spec, dict) and spec.get("format") == "diffinv-measurement" else "")
        raise IntegrityError(f"{path} is not a {FORMAT} spec{hint}")
    if spec.get("version") != VERSION:
        raise IntegrityError(f"{d} has format version {spec.get('version')!r}; this diffinv reads "
                             f"version {VERSION}")
    check_spec_schema(spec, SPEC_SCHEMA, path)
    if len(spec["indices"]) != spec["y_shape"][0]:
        raise IntegrityError(f"{path}: {len(spec['indices'])} indices for a batch of shape "
                             f"{spec['y_shape']}")
    return spec


def load_clip_measurement(directory: str | os.PathLike, *, truth: bool = True) -> ClipMeasurement:
    """Read a clip measurement folder back exactly; ``truth=False`` leaves the hidden truth unread.

    The record is checked before anything is solved: ``spec.json`` against :data:`SPEC_SCHEMA`,
    the operator rebuilt from its name and settings, ``y`` of the spec's shape, floating-point,
    finite and of a shape the operator produces, the per-clip parameters accepted by the operator
    (one per clip), and, with ``truth``, the truth clip (of the shape ``y`` was made from, finite,
    in [-1, 1]) and flow/mask shapes. Problems raise :class:`IntegrityError` or, for a missing
    file, :class:`MissingAssetError`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from diffinv.checks import check_image_range
    from diffinv.physics.noise import make_noise

    d = Path(directory)
    spec = _read_spec(d)
    try:
        make_noise(spec["noise"])
    except DiffinvError as e:
        raise IntegrityError(f"{d / SPEC_FILE}: 'noise': {e}") from None
    try:
        op = make_clip_operator(spec["operator"], **spec["settings"])
    except (DiffinvError, TypeError, ValueError) as e:
        raise IntegrityError(f"{d / SPEC_FILE}: operator {spec['operator']!r} with settings "
                             f"{spec['settings']} cannot be rebuilt: {e}") from None
    truth_file = None
    if truth and spec.get("hidden_truth"):
        truth_file = d / TRUTH_FILE
        if not truth_file.is_file():
            raise MissingAssetError(f"{truth_file} is missing, though {SPEC_FILE} names it "
                                    "(hidden_truth); pass truth=False to read the measurement "
                                    "without it")
    try:
        tensors = load_file(d / TENSOR_FILE)
        hidden = load_file(truth_file) if truth_file else {}
    except FileNotFoundError as e:
        raise MissingAssetError(f"{d / TENSOR_FILE} is missing") from e
    except (OSError, SafetensorError) as e:
        raise IntegrityError(f"cannot read the tensors of {d}: {e}") from e
    y = tensors.get("y")
    if y is None or list(y.shape) != spec["y_shape"]:
        raise IntegrityError(f"{d / TENSOR_FILE} does not hold y of shape {spec['y_shape']}")
    if not y.is_floating_point() or not torch.isfinite(y).all():
        raise IntegrityError(f"{d / TENSOR_FILE}: y must be floating-point and finite")
    y = y.float()
    B = y.shape[0]
    try:
        op.check_measurement(y)
        x_shape = tuple(op.in_shape(y.shape))
    except DiffinvError as e:
        raise IntegrityError(f"{d / TENSOR_FILE}: y does not fit operator "
                             f"{spec['operator']}: {e}") from None
    params = {}
    for k in spec["params"]:
        if f"param.{k}" not in tensors:
            raise IntegrityError(f"{d / SPEC_FILE} names the parameter {k!r}, which "
                                 f"{TENSOR_FILE} does not hold")
        v = tensors[f"param.{k}"]
        params[k] = v.float() if v.is_floating_point() else v
        if v.ndim == 0 or v.shape[0] != B:
            raise IntegrityError(f"{d / TENSOR_FILE}: parameter {k!r} of shape {tuple(v.shape)} "
                                 f"does not hold one value per clip ({B})")
    try:
        with torch.no_grad():
            got = op(torch.zeros(x_shape), **params)
    except DiffinvError as e:
        raise IntegrityError(f"{d / TENSOR_FILE}: the parameters do not fit operator "
                             f"{spec['operator']}: {e}") from None
    if tuple(got.shape) != tuple(y.shape):
        raise IntegrityError(f"{d / TENSOR_FILE}: operator {spec['operator']} makes "
                             f"{tuple(got.shape)} from clips {x_shape}, not y's {tuple(y.shape)}")
    x = flow = valid = None
    if truth_file is not None:
        x = hidden.get("x")
        if x is None:
            raise IntegrityError(f"{truth_file} holds no truth clip 'x'")
        if tuple(x.shape) != x_shape or not x.is_floating_point():
            raise IntegrityError(f"{truth_file}: the truth clip has shape {tuple(x.shape)} "
                                 f"({x.dtype}); y was made from float clips {x_shape}")
        x = x.float()
        if not torch.isfinite(x).all():
            raise IntegrityError(f"{truth_file}: the truth clip contains NaN/Inf")
        check_image_range(x.flatten(0, 1), f"the truth clip in {truth_file}")
        try:
            if "flow" in hidden:
                flow = check_flow(hidden["flow"].float(), x.shape)
            if "valid" in hidden:
                valid = check_flow(hidden["valid"].float(), x.shape, "valid", channels=1)
        except (DiffinvError, TypeError) as e:
            raise IntegrityError(f"{truth_file}: {e}") from None
    return ClipMeasurement(
        y=y, operator=spec["operator"], settings=dict(spec["settings"]), params=params,
        noise=spec["noise"], seed=spec["seed"], indices=list(spec["indices"]),
        fps=float(spec["fps"]), domain=spec.get("domain", "clip"), source=spec.get("source"),
        x=x, flow=flow, valid=valid)


__all__ = ["ClipMeasurement", "load_clip_measurement", "measure_clip", "save_clip_measurement"]
