"""The common solver contract.

``solver(y, physics, prior, seed=...) -> Result(x, nfe, seconds, trace)``

* ``y``: the measurement (B, ...) as a tensor;
* ``physics``: the public :class:`diffinv.physics.Measurement` (operator name, settings, public
  per-image parameters, noise spec: never the hidden truth), from which the solver builds its
  operator with ``physics.make_operator()`` and its noise model with ``physics.make_noise()``;
* ``prior``: a :class:`diffinv.diffusion.DiffusionPrior`;
* ``seed``: an int (image i of the batch uses ``image_seed(seed, i)``) or one ``torch.Generator``
  per image; every random draw comes from these per-image generators, so a seed reproduces a run
  bit for bit and batching does not change a per-image result.

A solver declares what it needs from an operator (``requires``: "linear", "svd", ...) and refuses
an operator that lacks it with a message naming what is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from diffinv.errors import DiffinvError, UnknownNameError


@dataclass
class Result:
    """A solver's output: the estimate ``x`` (B, C, H, W), network evaluations, wall time, trace.

    ``nfe`` counts batched network calls (forward passes; a backward pass through the network is
    recorded in ``trace["backward_nfe"]``). ``trace`` holds per-iteration logs (lists of floats or
    per-image tensors) and method-specific outputs (estimated kernels, the stopping iteration...).
    """

    x: torch.Tensor
    nfe: int
    seconds: float
    trace: dict[str, Any] = field(default_factory=dict)


class Solver:
    """Base class: subclasses set ``name``, ``requires`` and implement :meth:`solve`."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    #: the only operators (registry names) the solver accepts, for its help; empty: any operator
    #: that meets ``requires`` (``check_operator`` enforces it)
    operators: ClassVar[tuple[str, ...]] = ()

    def check_operator(self, operator: Any) -> None:
        missing = []
        for need in self.requires:
            if need == "linear" and not getattr(operator, "linear", False):
                missing.append("a linear operator")
            elif need == "svd" and (not callable(getattr(operator, "svd", None))
                                    or getattr(operator, "has_svd", True) is False):
                missing.append("an SVD")
        if missing:
            raise DiffinvError(
                f"solver {self.name!r} needs {' and '.join(missing)}; operator "
                f"{type(operator).__name__} does not provide it (see `diffinv solve --help`)")

    def solve(self, y: torch.Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def __call__(self, y: torch.Tensor, physics: Any, prior: Any,
                 seed: int | Sequence[torch.Generator] = 0) -> Result:
        from diffinv.seeding import batch_generators

        check_call(y, physics, prior)
        gens = batch_generators(seed, y.shape[0])
        prior.reset_nfe()
        t0 = time.perf_counter()
        x, trace = self.solve(y, physics, prior, gens)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return Result(x=x.detach(), nfe=prior.nfe, seconds=time.perf_counter() - t0, trace=trace)


def check_call(y: Any, physics: Any, prior: Any) -> None:
    """What every solver checks on entry: ``y`` is a tensor of a batch, ``prior`` is a loaded
    prior (not its name), and an image-like ``y`` was made from images in [-1, 1]
    (:func:`~diffinv.checks.check_measurement_range`: its per-image mean, which noise does not
    move; a [0, 255] measurement is refused, a [0, 1] one cannot be told from a bright image)."""
    from diffinv.checks import check_measurement_range
    from diffinv.physics.registry import is_image_like

    if not isinstance(y, torch.Tensor) or y.ndim < 2:
        raise DiffinvError(f"y must be a batched tensor (B, ...), got {type(y).__name__}")
    if isinstance(prior, str | os.PathLike) or not callable(getattr(prior, "reset_nfe", None)):
        raise DiffinvError(f"prior must be a DiffusionPrior, got {type(prior).__name__} {prior!r}; "
                           "load one first: diffinv.load_prior('fashion32')")
    if is_image_like(getattr(physics, "operator", None)) and torch.isfinite(y).all():
        check_measurement_range(y, "y")


_REGISTRY: dict[str, Callable[..., Solver]] = {}


def register_solver(name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator adding a solver to the registry under ``name``."""

    def deco(cls: type[Solver]) -> type[Solver]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    import importlib
    import pkgutil

    import diffinv.solvers as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("base",) and not mod.name.startswith("_"):
            importlib.import_module(f"diffinv.solvers.{mod.name}")


def list_solvers() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, one-line summary, requirements) of every registered solver; a solver that accepts
    only some operators names them instead (``("sr-avgpool only",)``)."""
    _load_builtin()
    return [(n, c.summary, (f"{' or '.join(c.operators)} only",) if c.operators else c.requires)  # type: ignore[attr-defined]
            for n, c in sorted(_REGISTRY.items())]


def make_solver(name: str, *, preset: str | None = None, operator: str | None = None,
                **params: Any) -> Solver:
    """Build solver ``name`` with its hyper-parameters; unknown names list the known ones.

    ``preset`` (see :mod:`diffinv.solvers.presets`) fills in the hyper-parameters tuned for
    ``operator`` (the forward operator's registry name); explicit ``params`` override it."""
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownNameError("solver", name, list(_REGISTRY))
    if preset is not None:
        from diffinv.solvers.presets import preset_params

        params = {**preset_params(preset, name, operator), **params}
    check_parameters(name, _REGISTRY[name], params)
    try:
        return _REGISTRY[name](**params)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"bad parameters for solver {name!r}: {e}") from e


def _kind_of(param: Any) -> tuple[str, Callable[[Any], bool]] | None:
    """What a parameter must be, from its numeric or boolean default: (words, test); None where
    the default says nothing (None, a string, an object) or the annotation allows other types."""
    default, note = param.default, str(param.annotation)
    if "Any" in note or "|" in note:
        return None
    if isinstance(default, bool):
        return "true or false", lambda v: isinstance(v, bool)
    if isinstance(default, int):
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return "a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    return None


def check_parameters(name: str, factory: Callable[..., Solver], params: dict[str, Any]) -> None:
    """Refuse a parameter that solver ``name`` does not take (listing those it takes) and a value
    that is not of the kind of the parameter's numeric or boolean default (``steps="abc"``,
    ``steps=2.5``)."""
    import inspect

    sig = inspect.signature(factory)
    taken = {k: p for k, p in sig.parameters.items()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key, value in params.items():
        if key not in taken:
            if open_ended:
                continue
            raise DiffinvError(f"solver {name!r} has no parameter {key!r}; its parameters: "
                               f"{', '.join(sorted(taken)) or '(none)'}")
        kind = _kind_of(taken[key])
        if kind is not None and not kind[1](value):
            raise DiffinvError(f"parameter {key!r} of solver {name!r} must be {kind[0]}, "
                               f"got {value!r}")
