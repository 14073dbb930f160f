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
from diffinv.seeding import image_generators

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
    instead of drawing them (validated, e.g. kernels must be non-negative and sum to 1).
    """
    check_image(x, "x")
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
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DiffinvError(f"seed must be an integer, got {seed!r}")
    B = x.shape[0]
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _list_of(check: Any) -> Any:
    return lambda v: isinstance(v, list) and all(check(e) for e in v)


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


#: the keys of ``spec.json``: (what the value must be, its test, required)
SPEC_SCHEMA: dict[str, tuple[str, Any, bool]] = {
    "format": ("a string", _is_str, True),
    "version": ("an integer", _is_int, True),
    "operator": ("an operator name", _is_str, True),
    "config": ("a JSON object of operator settings", lambda v: isinstance(v, dict), True),
    "noise": ("a noise spec such as 'gaussian:0.05'", _is_str, True),
    "seed": ("an integer", _is_int, True),
    "domain": ("a string", _is_str, True),
    "indices": ("a list of integers", _list_of(_is_int), True),
    "y_shape": ("a list of integers", _list_of(_is_int), True),
    "params": ("a list of parameter names", _list_of(_is_str), True),
    "blind": ("true or false", lambda v: isinstance(v, bool), False),
    "source": ("a string or null", _optional(_is_str), False),
    "dtype": ("a string", _is_str, False),
    "hidden_truth": ("a file name or null", _optional(_is_str), False),
    "true_params": ("a list of parameter names", _list_of(_is_str), False),
}


def _read_spec(d: Path) -> dict[str, Any]:
    """``d/spec.json``, checked against :data:`SPEC_SCHEMA` (hand-edited records included)."""
    path = d / SPEC_FILE
    if not path.is_file():
        raise MissingAssetError(f"{d} is not a measurement folder (no {SPEC_FILE})")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(spec, dict):
        raise IntegrityError(f"{path} does not hold a JSON object (a {FORMAT} spec)")
    if spec.get("format") != FORMAT:
        raise IntegrityError(f"{path} is not a {FORMAT} spec")
    if spec.get("version") != VERSION:
        raise IntegrityError(f"{d} has format version {spec.get('version')}; this diffinv reads "
                             f"version {VERSION}")
    for key, (what, ok, required) in SPEC_SCHEMA.items():
        if key not in spec:
            if required:
                raise IntegrityError(f"{path} lacks {key!r} ({what})")
        elif not ok(spec[key]):
            raise IntegrityError(f"{path}: {key!r} must be {what}, got {spec[key]!r}")
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


def load_measurement(directory: str | os.PathLike, *, truth: bool = True) -> Measurement:
    """Read a measurement folder back exactly; ``truth=False`` leaves the hidden truth unread.

    The record is checked first: ``spec.json`` against :data:`SPEC_SCHEMA`, every tensor it
    names, ``y``'s shape, and (with ``truth``) the truth file it names: any mismatch raises
    :class:`IntegrityError` (:class:`MissingAssetError` for a missing file) naming the problem.
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
    config = {k: _tensor(tensors, v["tensor"], d) if isinstance(v, dict) and "tensor" in v else v
              for k, v in spec["config"].items()}
    return Measurement(
        y=tensors["y"], operator=spec["operator"], config=config,
        params={k: _tensor(tensors, f"param.{k}", d) for k in spec["params"]},
        noise=spec["noise"], seed=spec["seed"], domain=spec["domain"],
        indices=list(spec["indices"]), source=spec.get("source"), blind=bool(spec.get("blind")),
        x=hidden.get("x"), true_params={k.removeprefix("true."): v for k, v in hidden.items()
                                        if k.startswith("true.")})
