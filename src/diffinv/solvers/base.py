"""The common solver contract.

``solver(y, physics, prior, seed=...) -> Result(x, nfe, seconds, trace)``

* ``y``: the measurement (B, ...) as a tensor;
* ``physics``: the public :class:`diffinv.physics.Measurement` (operator name, settings, public
  per-image parameters, noise spec: never the hidden truth), from which the solver builds its
  operator with ``physics.make_operator()`` and its noise model with ``physics.make_noise()``;
* ``prior``: a :class:`diffinv.diffusion.DiffusionPrior`;
* ``seed``: an int (image i of the batch uses ``image_seed(seed, i)``) or one ``torch.Generator``
  per image; every random draw comes from these per-image generators, so a seed reproduces a run
  bit for bit and batching does not change a per-image result; any other seed (a float, a
  string) is refused (:func:`diffinv.seeding.check_seed`).

diffinv computes in float32: a ``y`` of another floating dtype (float64, float16, bfloat16) is
converted to float32 on entry, as :func:`diffinv.physics.measure` converts its images, so the
result ``x`` is float32. An empty batch is refused.

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

from diffinv.errors import DiffinvError, ShapeError, UnknownNameError


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
    #: what else the solver needs of a measurement, in words, for its help (``list_solvers``);
    #: empty: any known (non-blind) operator that meets ``requires``
    needs: ClassVar[tuple[str, ...]] = ()
    #: True for the blind solvers that return a kernel estimate (``trace["kernel"]``): they take
    #: the ``discrepancy`` option of :func:`make_solver` (:mod:`diffinv.solvers._discrepancy`)
    estimates_kernel: ClassVar[bool] = False
    #: the discrepancy-principle safeguard's threshold tau (None: off); set by :func:`make_solver`
    discrepancy: float | None = None

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
        if y.is_floating_point() and y.dtype != torch.float32:
            y = y.float()  # diffinv computes in float32, as measure() does (module docstring)
        gens = batch_generators(seed, y.shape[0])
        prior.reset_nfe()
        t0 = time.perf_counter()
        x, trace = self.solve(y, physics, prior, gens)
        if self.discrepancy is not None:
            from diffinv.solvers._discrepancy import apply_fallback

            x, trace = apply_fallback(self, y, physics, x, trace, self.discrepancy)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return Result(x=x.detach(), nfe=prior.nfe, seconds=time.perf_counter() - t0, trace=trace)


def check_public(physics: Any) -> None:
    """Refuse a ``physics`` that carries the hidden truth (the true image ``x`` or the true
    parameters of a blind family): a solver must never be able to see it. Pass
    ``measurement.public()``."""
    x = getattr(physics, "x", None)
    hidden = getattr(physics, "true_params", None)
    if x is not None or hidden:
        what = " and ".join(w for w, has in (("the true image x", x is not None),
                                             (f"the true parameters {sorted(hidden)}",
                                              bool(hidden))) if has)
        raise DiffinvError(f"the measurement given to the solver carries the hidden truth ({what}), "
                           "which a solver must never see: pass measurement.public()")


def check_call(y: Any, physics: Any, prior: Any) -> None:
    """What every solver checks on entry: ``physics`` carries no hidden truth
    (:func:`check_public`), ``y`` is a tensor of a batch, ``prior`` is a loaded prior (not its
    name), and an image-like ``y`` was made from images in [-1, 1]
    (:func:`~diffinv.checks.check_measurement_range`: its per-image mean, which noise does not
    move; a [0, 255] measurement is refused, a [0, 1] one cannot be told from a bright image)."""
    from diffinv.checks import check_measurement_range
    from diffinv.physics.registry import is_image_like

    check_public(physics)
    if not isinstance(y, torch.Tensor) or y.ndim < 2:
        raise DiffinvError(f"y must be a batched tensor (B, ...), got {type(y).__name__}")
    if y.shape[0] == 0:
        raise ShapeError("y holds no images (a batch of 0): give at least one measurement")
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
    """(name, one-line summary, requirements) of every registered solver: what it needs of the
    operator (``requires``, or the only operators it takes: ``("sr-avgpool only",)``) and, in
    words, what else it needs (``needs``: a blind family, a trained generator...). Empty: any
    known operator."""
    _load_builtin()
    out = []
    for n, c in sorted(_REGISTRY.items()):
        req = (f"{' or '.join(c.operators)} only",) if c.operators else c.requires  # type: ignore[attr-defined]
        out.append((n, c.summary, tuple(req) + tuple(getattr(c, "needs", ()))))  # type: ignore[attr-defined]
    return out


#: keyword arguments of :func:`make_solver` itself, which no solver parameter (``-p KEY=VALUE``)
#: may be called, and where each is given instead
RESERVED_PARAMETERS = {
    "name": "the solver is chosen with --solver",
    "preset": "presets are chosen with --preset",
    "operator": "the operator is the measurement's own",
}


def check_reserved(params: dict[str, Any]) -> None:
    """Refuse solver parameters named like :func:`make_solver`'s own arguments."""
    for key in params:
        if key in RESERVED_PARAMETERS:
            raise DiffinvError(f"{key!r} is not a solver parameter: {RESERVED_PARAMETERS[key]}")


def check_operator_name(operator: object) -> str:
    """``operator`` as a registry name (or the ``custom:Type`` name :func:`~diffinv.physics.measure`
    gives an unregistered operator); anything else raises :class:`UnknownNameError` listing the
    registered operators."""
    from diffinv.physics.registry import OPERATORS

    if isinstance(operator, str) and (operator in OPERATORS or operator.startswith("custom:")):
        return operator
    raise UnknownNameError("operator", str(operator), list(OPERATORS))


def make_solver(name: str, /, *, preset: str | None = None, operator: str | None = None,
                **params: Any) -> Solver:
    """Build solver ``name`` with its hyper-parameters; unknown names list the known ones.

    ``preset`` (see :mod:`diffinv.solvers.presets`) fills in the hyper-parameters tuned for
    ``operator`` (the forward operator's registry name; an unknown name is refused, listing the
    known ones); explicit ``params`` override it. Pass
    user-given parameters through :func:`check_reserved` first: ``preset`` or ``operator`` among
    them would clash with these arguments.

    ``discrepancy=tau`` (blind solvers that estimate a kernel only; a number > 1) turns on the
    discrepancy-principle safeguard of :mod:`diffinv.solvers._discrepancy`: an image whose
    estimate leaves a residual above ``tau`` times the noise level is returned as ``y``."""
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownNameError("solver", name, list(_REGISTRY))
    if operator is not None:
        check_operator_name(operator)
    if preset is not None:
        from diffinv.solvers.presets import preset_params

        params = {**preset_params(preset, name, operator), **params}
    tau = params.pop("discrepancy", None)
    if tau is not None:
        from diffinv.solvers._discrepancy import check_tau

        if not getattr(_REGISTRY[name], "estimates_kernel", False):
            kernel_solvers = sorted(n for n, c in _REGISTRY.items()
                                    if getattr(c, "estimates_kernel", False))
            raise DiffinvError(f"solver {name!r} estimates no blur kernel, so it has no "
                               f"discrepancy option (blind solvers that do: "
                               f"{', '.join(kernel_solvers)})")
        tau = check_tau(tau, name)
    check_parameters(name, _REGISTRY[name], params)
    try:
        solver = _REGISTRY[name](**params)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"bad parameters for solver {name!r}: {e}") from e
    if tau is not None:
        solver.discrepancy = tau
    return solver


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
