"""A measurement ``y = A(x) + n`` with what made it; seeded creation, saving and exact loading.

``measure(x, "motion-blur", "gaussian:0.05", seed=3)`` draws, for image ``i`` (index
``indices[i]``), the operator's parameters and then the noise from two child generators of the
per-image generator ``image_seed(seed, indices[i])`` (:mod:`diffinv.seeding`): a batch gives the
same measurement as its images one by one, and an image's noise does not depend on the batch.

What a solver may see (``Measurement.public()``): ``y``, the operator's name and public settings,
the public per-image parameters (masks, known kernels), the noise spec, the seed, the prior domain.
For a blind family the drawn parameters are the hidden truth (``true_params``), kept with ``x`` and
saved in a separate file.

On disk (:func:`save_measurement`), a folder with:

* ``spec.json``: operator, its settings, noise, seed, domain, indices, source, shapes;
* ``measurement.safetensors``: ``y`` and the public tensors (``param.NAME``, ``config.NAME``);
* ``y.png``: the measurement for eyes only (:func:`png_view`: clipped to ``[-1, 1]``, or for
  measurements that are not images, as in phase retrieval, ``log(1 + |y|)`` min-max scaled);
* ``truth.safetensors``: the hidden truth ``x`` and ``true.NAME`` parameters.

:func:`load_measurement` reads it back bit-exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.checks import check_image, check_image_range, check_output_folder
from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError, ShapeError
from diffinv.fileio import atomic_folder
from diffinv.physics.base import Operator
from diffinv.physics.kernels import check_kernel
from diffinv.physics.noise import NoiseModel, make_noise
from diffinv.physics.registry import OPERATORS, is_image_like, make_operator
from diffinv.resources import check_memory, measure_bytes
from diffinv.seeding import check_seed, image_generators

FORMAT = "diffinv-measurement"
VERSION = 1
SPEC_FILE, TENSOR_FILE, TRUTH_FILE, PNG_FILE = (
    "spec.json", "measurement.safetensors", "truth.safetensors", "y.png")


@dataclass
class Measurement:
    """``y`` and what made it. ``x`` and ``true_params`` are the hidden truth (may be absent)."""

    y: Tensor
    operator: str
    config: dict[str, Any]
    params: dict[str, Tensor]
    noise: str
    seed: int
    domain: str
    indices: list[int]
    source: str | None = None
    blind: bool = False
    x: Tensor | None = None
    true_params: dict[str, Tensor] = field(default_factory=dict)
    #: the operator object itself when it is not in the registry (e.g. a deepinv physics,
    #: :mod:`diffinv.interop.deepinv`); such a measurement lives in memory only
    operator_instance: Operator | None = field(default=None, repr=False, compare=False)

    def make_operator(self) -> Operator:
        """Rebuild the operator from its name and public settings (or return the unregistered
        operator object the measurement was made with)."""
        if self.operator_instance is not None:
            return self.operator_instance
        return make_operator(self.operator, **{k: v for k, v in self.config.items()
                                               if k != "blind"})

    def make_noise(self) -> NoiseModel:
        return make_noise(self.noise)

    def public(self) -> Measurement:
        """A copy without the hidden truth: what a solver receives."""
        return replace(self, x=None, true_params={})

    def true_kernels(self) -> Tensor | None:
        """The hidden ``(B, k, k)`` point-spread functions of a kernel-blur measurement, for
        evaluation only (kernel error, comparisons with a delta); None when the operator is not a
        kernel blur (rotation, zoom, inpainting, ...). Needs the hidden truth: raises on a public
        copy of a blind measurement."""
        op = self.make_operator()
        if not hasattr(op, "_kernel"):
            return None
        if self.x is None or (self.blind and not self.true_params):
            raise DiffinvError("true_kernels needs the hidden truth (x and the drawn parameters); "
                               "this is a public copy of the measurement")
        params = {**self.params, **self.true_params}
        return op._kernel(self.x, params).expand(self.x.shape[0], -1, -1).detach().cpu()


def _child_generators(seed: int, indices: list[int]) -> tuple[list, list]:
    """Per image, two independent generators (operator parameters, noise) from its seed."""
    op_gens, noise_gens = [], []
    for g in image_generators(seed, indices):
        seeds = torch.randint(0, 2 ** 62, (2,), generator=g)
        for out, s in zip((op_gens, noise_gens), seeds.tolist(), strict=True):
            child = torch.Generator()
            child.manual_seed(int(s))
            out.append(child)
    return op_gens, noise_gens


def measure(x: Tensor, operator: str | Operator, noise: str | NoiseModel, seed: int,
            indices: list[int] | None = None, *, domain: str = "image", source: str | None = None,
            params: dict[str, Tensor] | None = None) -> Measurement:
    """Make ``y = A(x; theta) + n`` with per-image seeded ``theta`` and ``n``.

    ``x``: the true images (B, C, H, W) in [-1, 1] (checked: values outside raise, a batch with no
    value below 0 warns that it looks like [0, 1]; :func:`~diffinv.checks.check_image_range`).
    ``operator``: a registered name, an operator from :func:`make_operator`, any other
    :class:`Operator` or a deepinv ``Physics`` (wrapped by :mod:`diffinv.interop.deepinv`; these two
    give a measurement that lives in memory only: :func:`save_measurement` refuses it); ``noise``: a spec
    such as ``"gaussian:0.05"``; ``indices``: the images' indices in their data set (default
    ``0..B-1``), which select their random streams; ``params``: per-image operator parameters to use
    instead of drawing them (validated: kernels must be non-negative, sum to 1 and have the
    operator's kernel size; one value for the whole batch is stored once per image).

    diffinv computes in float32: an ``x`` of another floating dtype (float64, float16, bfloat16)
    is converted to float32 first, so ``y``, the parameters and the kept truth are float32, as
    every solver expects. An empty batch, a ``seed`` that is not an integer
    (:func:`~diffinv.seeding.check_seed`) and a batch whose measuring would need more memory than
    is available (:func:`~diffinv.resources.measure_bytes`) raise before anything is drawn.
    """
    check_image(x, "x")
    if x.shape[0] == 0:
        raise ShapeError("x holds no images (a batch of 0): measure at least one image")
    if x.dtype != torch.float32:
        x = x.float()
    check_image_range(x, "x")
    op = make_operator(operator) if isinstance(operator, str) else operator
    if not isinstance(op, Operator):
        from diffinv.interop.deepinv import from_deepinv, is_deepinv_physics

        if not is_deepinv_physics(op):
            raise DiffinvError("operator must be a registered name, a diffinv Operator or a "
                               f"deepinv Physics; got {type(op).__name__}")
        op = from_deepinv(op)
    name = getattr(op, "registry_name", None)
    instance = None if name is not None else op
    if name is None:
        name = f"custom:{type(op).__name__}"
    nm = make_noise(noise)
    seed = check_seed(seed)
    B = x.shape[0]
    check_memory(measure_bytes(*x.shape, name), f"measuring {B} images of "
                 f"{'x'.join(str(s) for s in x.shape[1:])} with {name}", device=x.device,
                 hint="measure fewer or smaller images at a time")
    indices = list(range(B)) if indices is None else [int(i) for i in indices]
    if len(indices) != B:
        raise ShapeError(f"got {len(indices)} indices for a batch of {B} images")
    op_gens, noise_gens = _child_generators(seed, indices)
    if params is None:
        theta = op.draw_params(op_gens, x.shape[1:], device=x.device, dtype=x.dtype)
    else:
        theta = {k: torch.as_tensor(v).to(device=x.device) for k, v in params.items()}
        for k in ("kernel",):
            if k in theta:
                check_kernel(theta[k], k)
        theta = _per_image(op, theta, B)  # stored one per image, as load_measurement wants them
        check_record_params(op, op.config(), theta, B, "params", image_shape=tuple(x.shape),
                            error=DiffinvError)
    with torch.no_grad():
        ax = op(x, **theta)
        y = nm.sample(ax, noise_gens)
    theta = {k: v.detach() for k, v in theta.items()}
    blind = bool(getattr(op, "blind", False))
    return Measurement(
        y=y, operator=name, config=op.config(), params={} if blind else theta, noise=nm.spec(),
        seed=seed, domain=domain, indices=indices, source=source, blind=blind,
        x=x.detach().clone(), true_params=theta if blind else {}, operator_instance=instance)


# ------------------------------------------------------------------ saving and loading
def _split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    js, tensors = {}, {}
    for k, v in config.items():
        if isinstance(v, Tensor):
            tensors[f"config.{k}"] = v.detach().cpu().contiguous()
            js[k] = {"tensor": f"config.{k}"}
        else:
            js[k] = list(v) if isinstance(v, tuple) else v
    return js, tensors


def png_view(y: Tensor, image_like: bool = True) -> Tensor:
    """What ``y.png`` shows: images clipped to ``[-1, 1]``; other measurements (Fourier
    magnitudes) as ``log(1 + |y|)`` min-max scaled per image."""
    y = y.detach().float().cpu()
    if image_like:
        return y.clamp(-1, 1)
    y = torch.log1p(y.abs())
    lo = y.amin(dim=(1, 2, 3), keepdim=True)
    hi = y.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (y - lo) / (hi - lo).clamp_min(1e-12) - 1


def _write_png(y: Tensor, path: Path, image_like: bool) -> None:
    from diffinv.data.images import make_grid, save_image

    v = png_view(y, image_like)
    if v.shape[1] not in (1, 3):
        v = v[:, :1]
    save_image(make_grid(v, ncol=min(8, v.shape[0]), value=1.0), path,
               scale=max(1, 128 // max(v.shape[-2:])))


def save_measurement(m: Measurement, directory: str | os.PathLike, *,
                     overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
                     ) -> Path:
    """Write ``m`` to ``directory`` (see the module docstring), all or nothing.

    The files are written to a temporary sibling folder renamed into place at the end, so a
    failure leaves nothing behind. An existing non-empty ``directory`` is an error unless
    ``overwrite``, and even then it is replaced only if diffinv wrote it; ``inputs`` (the files
    the measurement was made from) and folders holding them are never replaced
    (:mod:`diffinv.fileio`).
    """
    from safetensors.torch import save_file

    if m.operator_instance is not None:
        raise DiffinvError(f"a measurement made with an unregistered operator ({m.operator}) "
                           "cannot be saved: a saved measurement names its operator in "
                           "diffinv's registry (diffinv measure --list)")
    inputs = list(inputs)
    out = check_output_folder(directory, overwrite=overwrite, inputs=inputs)
    with atomic_folder(out, overwrite=overwrite, inputs=inputs) as tmp:
        cfg, cfg_tensors = _split_config(m.config)
        tensors = {"y": m.y.detach().cpu().contiguous(), **cfg_tensors}
        tensors.update({f"param.{k}": v.detach().cpu().contiguous() for k, v in m.params.items()})
        save_file(tensors, tmp / TENSOR_FILE)
        has_truth = m.x is not None or bool(m.true_params)
        if has_truth:
            truth = {f"true.{k}": v.detach().cpu().contiguous() for k, v in m.true_params.items()}
            if m.x is not None:
                truth["x"] = m.x.detach().cpu().contiguous()
            save_file(truth, tmp / TRUTH_FILE)
        spec = {
            "format": FORMAT, "version": VERSION, "operator": m.operator, "config": cfg,
            "blind": m.blind, "noise": m.noise, "seed": m.seed, "domain": m.domain,
            "indices": m.indices, "source": m.source, "y_shape": list(m.y.shape),
            "dtype": str(m.y.dtype).removeprefix("torch."), "params": sorted(m.params),
            "hidden_truth": TRUTH_FILE if has_truth else None,
            "true_params": sorted(m.true_params),
        }
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        _write_png(m.y, tmp / PNG_FILE, is_image_like(m.operator))
    return out


# ------------------------------------------------------------------ record checks
# (shared with the clip measurements of diffinv.video.measurement)
def is_int(v: Any) -> bool:
    """An int that is not a bool (a JSON integer)."""
    return isinstance(v, int) and not isinstance(v, bool)


def list_of(check: Any) -> Any:
    """The test "a list whose items all pass ``check``"."""
    return lambda v: isinstance(v, list) and all(check(e) for e in v)


def optional(check: Any) -> Any:
    """The test "None or passes ``check``"."""
    return lambda v: v is None or check(v)


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def check_spec_schema(spec: dict[str, Any], schema: dict[str, tuple[str, Any, bool]],
                      path: Path) -> None:
    """Every key of ``schema`` (``key: (what the value must be, its test, required)``) present
    when required and, when present, passing its test; otherwise an IntegrityError naming
    ``path``."""
    for key, (what, ok, required) in schema.items():
        if key not in spec:
            if required:
                raise IntegrityError(f"{path} lacks {key!r} ({what})")
        elif not ok(spec[key]):
            raise IntegrityError(f"{path}: {key!r} must be {what}, got {spec[key]!r}")


#: the keys of ``spec.json``: (what the value must be, its test, required)
SPEC_SCHEMA: dict[str, tuple[str, Any, bool]] = {
    "format": ("a string", is_str, True),
    "version": ("an integer", is_int, True),
    "operator": ("an operator name", is_str, True),
    "config": ("a JSON object of operator settings", lambda v: isinstance(v, dict), True),
    "noise": ("a noise spec such as 'gaussian:0.05'", is_str, True),
    "seed": ("an integer", is_int, True),
    "domain": ("a string", is_str, True),
    "indices": ("a list of integers", list_of(is_int), True),
    "y_shape": ("a list of integers", list_of(is_int), True),
    "params": ("a list of parameter names", list_of(is_str), True),
    "blind": ("true or false", lambda v: isinstance(v, bool), False),
    "source": ("a string or null", optional(is_str), False),
    "dtype": ("a string", is_str, False),
    "hidden_truth": ("a file name or null", optional(is_str), False),
    "true_params": ("a list of parameter names", list_of(is_str), False),
}


def _read_spec(d: Path) -> dict[str, Any]:
    """``d/spec.json``, checked against :data:`SPEC_SCHEMA` (hand-edited records included)."""
    path = d / SPEC_FILE
    if not d.exists():
        raise MissingAssetError(f"measurement folder {d} does not exist")
    if not d.is_dir():
        raise MissingAssetError(f"{d} is a file, not a measurement folder (a folder written by "
                                "`diffinv measure` or save_measurement)")
    if not path.is_file():
        held = sorted(p.name for p in d.iterdir())
        holds = (f"it holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''}" if held
                 else "it is empty")
        raise MissingAssetError(f"{d} is not a measurement folder: it has no {SPEC_FILE} ({holds}; "
                                f"`diffinv measure` writes {SPEC_FILE}, {TENSOR_FILE}, {PNG_FILE})")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(spec, dict):
        raise IntegrityError(f"{path} does not hold a JSON object (a {FORMAT} spec)")
    if spec.get("format") != FORMAT:
        raise IntegrityError(f"{path} is not a {FORMAT} spec")
    version = spec.get("version")
    if "version" not in spec:
        raise IntegrityError(f"{path} lacks 'version' (an integer)")
    if not is_int(version):
        what = f"the string {version!r}" if isinstance(version, str) else repr(version)
        raise IntegrityError(f"{path}: 'version' must be an integer, got {what}")
    if version != VERSION:
        raise IntegrityError(f"{d} has format version {version}; this diffinv reads "
                             f"version {VERSION}")
    check_spec_schema(spec, SPEC_SCHEMA, path)
    if spec["operator"] not in OPERATORS:
        raise IntegrityError(f"{path}: unknown operator {spec['operator']!r}")
    if len(spec["indices"]) != (spec["y_shape"] or [0])[0]:
        raise IntegrityError(f"{path}: {len(spec['indices'])} indices for a batch of shape "
                             f"{spec['y_shape']}")
    try:
        make_noise(spec["noise"])
    except DiffinvError as e:
        raise IntegrityError(f"{path}: 'noise': {e}") from None
    return spec


def _tensor(tensors: dict[str, Tensor], name: str, d: Path) -> Tensor:
    if name not in tensors:
        raise IntegrityError(f"{d / SPEC_FILE} names the tensor {name!r}, which "
                             f"{TENSOR_FILE} does not hold")
    return tensors[name]


def _truth_path(d: Path, spec: dict[str, Any]) -> Path | None:
    """The hidden truth's file, if the spec names one; a missing file is an error, not an absence."""
    if not spec.get("hidden_truth"):
        return None
    if not (d / TRUTH_FILE).is_file():
        raise MissingAssetError(
            f"{d / TRUTH_FILE} is missing, though {SPEC_FILE} names it (hidden_truth): put it "
            f"back, or set \"hidden_truth\": null in {SPEC_FILE} to use the measurement without it")
    return d / TRUTH_FILE


def _as_float32(t: Tensor) -> Tensor:
    """A floating tensor of another dtype as float32, the dtype diffinv computes in."""
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def _n_images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def check_record_params(op: Operator, config: dict[str, Any], params: dict[str, Tensor],
                        batch: int, where: str, *, image_shape: tuple[int, ...] | None = None,
                        error: type[DiffinvError] = IntegrityError) -> None:
    """Check per-image operator parameters as a record holds them, raising ``error`` that names
    ``where`` they come from: parameters the operator takes, one value per image (leading size
    ``batch``: a record never relies on broadcasting), kernels of the operator's kernel size
    (``config["size"]``) that are valid blur kernels, masks of the images' size, finite values."""
    op_name = getattr(op, "registry_name", type(op).__name__)
    for k, v in params.items():
        if k not in op.param_names:
            raise error(f"{where}: operator {op_name} takes no parameter {k!r} (it takes "
                        f"{', '.join(op.param_names) or 'none'})")
        nd = op.param_ndim.get(k)
        if nd is not None and v.ndim == nd + 1 and v.shape[0] != batch:
            raise error(f"{where}: parameter {k!r} holds values for {_n_images(v.shape[0])}, but "
                        f"y has {_n_images(batch)}: a record holds one per image")
        if nd is not None and v.ndim != nd + 1:
            raise error(f"{where}: parameter {k!r} has shape {tuple(v.shape)}; a record holds one "
                        f"per image, {nd + 1}-dimensional with a leading size of {batch}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise error(f"{where}: parameter {k!r} contains NaN/Inf")
        size, grid = config.get("size"), config.get("grid")
        if k in ("kernel", "kernels"):
            h, w = (int(s) for s in v.shape[-2:])
            if is_int(size) and (h, w) != (size, size):
                raise error(f"{where}: parameter {k!r} holds {h}x{w} kernels, but operator "
                            f"{op_name} has kernel size {size} (its 'size' setting)")
            if k == "kernels" and is_int(grid) and v.shape[1] != grid ** 2:
                raise error(f"{where}: parameter 'kernels' holds {v.shape[1]} kernels per image, "
                            f"but operator {op_name} has a {grid}x{grid} grid of them")
            if v.dtype in (torch.float16, torch.bfloat16):  # their sums are off by rounding
                if (v < 0).any():
                    raise error(f"{where}: {k} has negative entries; a blur kernel is "
                                "non-negative")
            else:
                try:
                    check_kernel(v.reshape(-1, h, w), k)
                except DiffinvError as e:
                    raise error(f"{where}: {e}") from None
        if k == "mask" and image_shape is not None \
                and tuple(v.shape[-2:]) != tuple(image_shape[-2:]):
            raise error(f"{where}: parameter 'mask' is {v.shape[-2]}x{v.shape[-1]}, but the "
                        f"images are {image_shape[-2]}x{image_shape[-1]}")


def _per_image(op: Operator, params: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
    """Parameters given once for the batch (no batch dimension, or a leading size of 1) as one
    copy per image, as a record holds them."""
    out = {}
    for k, v in params.items():
        nd = op.param_ndim.get(k)
        if nd is not None and v.ndim == nd:
            v = v.unsqueeze(0)
        if nd is not None and v.ndim == nd + 1 and v.shape[0] == 1 and batch > 1:
            v = v.expand(batch, *v.shape[1:]).clone()
        out[k] = v
    return out


def _record_operator(spec: dict[str, Any], config: dict[str, Any], d: Path) -> Operator | None:
    """The record's operator, built from its settings (None where an optional asset it needs, such
    as the bkse weights, is not installed here: the solver will say so)."""
    try:
        return make_operator(spec["operator"], **{k: v for k, v in config.items() if k != "blind"})
    except MissingAssetError:
        return None
    except (DiffinvError, TypeError, ValueError) as e:
        raise IntegrityError(f"{d / SPEC_FILE}: 'config' does not make a {spec['operator']} "
                             f"operator: {e}") from None


def _check_truth(x: Tensor, y: Tensor, op: Operator | None, op_name: str, where: Path) -> Tensor:
    """The truth image of a record, checked before any solving: floating-point, (B, C, H, W) with
    y's batch, of the shape y was made from, finite, in [-1, 1]; returned as float32."""
    import warnings

    from diffinv.errors import RangeWarning

    name = f"the truth image x in {where}"
    if not x.is_floating_point():
        raise IntegrityError(f"{name} is {str(x.dtype).removeprefix('torch.')}; a truth image is "
                             "floating-point, in [-1, 1]")
    x = _as_float32(x)
    if x.ndim != 4:
        raise IntegrityError(f"{name} has shape {tuple(x.shape)}; a truth image is (B, C, H, W)")
    if x.shape[0] != y.shape[0]:
        raise IntegrityError(f"{name} holds {_n_images(x.shape[0])}, but y holds "
                             f"{y.shape[0]}")
    if op is not None:
        try:
            made = tuple(op.out_shape(x.shape))
        except DiffinvError:
            made = None
        if made != tuple(y.shape):
            raise IntegrityError(f"{name} has shape {tuple(x.shape)}, but y, of shape "
                                 f"{tuple(y.shape)}, was not made by {op_name} from images of "
                                 "that shape")
    if not torch.isfinite(x).all():
        raise IntegrityError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN/Inf values")
    with warnings.catch_warnings():  # a [0, 1]-looking truth was warned about when measured
        warnings.simplefilter("ignore", RangeWarning)
        check_image_range(x, name)
    return x


def load_measurement(directory: str | os.PathLike, *, truth: bool = True) -> Measurement:
    """Read a measurement folder back; ``truth=False`` leaves the hidden truth unread.

    The record is checked first, before anything is solved: ``spec.json`` against
    :data:`SPEC_SCHEMA`, every tensor it names, ``y``'s shape and dtype, the operator's settings,
    its per-image parameters (:func:`check_record_params`: one per image, kernels of the
    operator's size) and, with ``truth``, the truth file it names (which must hold the truth image
    ``x``: of the shape ``y`` was made from, finite, in [-1, 1]): any problem raises
    :class:`IntegrityError` (:class:`MissingAssetError` for a missing file, :class:`DiffinvError`
    for a truth beyond [-1, 1]) naming it.

    Tensors are read exactly, except that floating-point tensors of another dtype (float16,
    bfloat16, float64) are converted to float32, the dtype diffinv computes in (a float64 record
    loses its last digits); an integer ``y`` or ``x`` is refused.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    spec = _read_spec(d)
    truth_file = _truth_path(d, spec) if truth else None
    try:
        tensors = load_file(d / TENSOR_FILE)
        hidden = load_file(truth_file) if truth_file else {}
    except (OSError, SafetensorError) as e:
        raise IntegrityError(f"cannot read the tensors of {d}: {e}") from e
    if "y" not in tensors or list(tensors["y"].shape) != spec["y_shape"]:
        raise IntegrityError(f"{d / TENSOR_FILE} does not hold y of shape {spec['y_shape']}")
    y = tensors["y"]
    if not y.is_floating_point():
        raise IntegrityError(f"{d / TENSOR_FILE}: y is {str(y.dtype).removeprefix('torch.')}; a "
                             "measurement is floating-point")
    y = _as_float32(y)
    config = {k: (_as_float32(_tensor(tensors, v["tensor"], d))
                  if isinstance(v, dict) and "tensor" in v else v)
              for k, v in spec["config"].items()}
    params = {k: _tensor(tensors, f"param.{k}", d) for k in spec["params"]}
    op = _record_operator(spec, config, d)
    B = y.shape[0]
    if op is not None:
        image_shape = None
        with contextlib.suppress(DiffinvError):  # what y's images are, where the operator knows
            image_shape = tuple(op.in_shape(y.shape))
        check_record_params(op, config, params, B, str(d / TENSOR_FILE), image_shape=image_shape)
        missing = [k for k in op.required_params if k not in params]
        if missing and not spec.get("blind"):
            raise IntegrityError(f"{d / SPEC_FILE}: operator {spec['operator']} needs the "
                                 f"per-image parameter(s) {missing}, which the record does not "
                                 f"hold (its 'params': {spec['params']})")
    params = {k: _as_float32(v) for k, v in params.items()}
    x, true_params = None, {}
    if truth_file is not None:
        true_params = {k.removeprefix("true."): v for k, v in hidden.items()
                       if k.startswith("true.")}
        lacking = [k for k in spec.get("true_params", []) if k not in true_params]
        if lacking:
            raise IntegrityError(f"{d / SPEC_FILE} names the hidden parameter(s) {lacking}, which "
                                 f"{truth_file.name} does not hold")
        if "x" not in hidden:
            held = ", ".join(sorted(hidden)) or "nothing"
            raise IntegrityError(
                f"{truth_file} holds no truth image 'x' (it holds {held}), so no PSNR/SSIM could "
                f"be computed: put the truth back, or set \"hidden_truth\": null in {SPEC_FILE} "
                "to use the measurement without it")
        x = _check_truth(hidden["x"], y, op, spec["operator"], truth_file)
        if op is not None:
            check_record_params(op, config, true_params, B, str(truth_file),
                                image_shape=tuple(x.shape))
        true_params = {k: _as_float32(v) for k, v in true_params.items()}
    return Measurement(
        y=y, operator=spec["operator"], config=config, params=params,
        noise=spec["noise"], seed=spec["seed"], domain=spec["domain"],
        indices=list(spec["indices"]), source=spec.get("source"), blind=bool(spec.get("blind")),
        x=x, true_params=true_params)
