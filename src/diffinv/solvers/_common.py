"""Helpers shared by the solvers: the problem a measurement describes, checks, divergence."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError


class SolverDivergedError(NonFiniteError):
    """NaN/Inf appeared in a solver's iterate. ``step`` is the reverse-loop index (0 = first step)
    and ``timestep`` the diffusion timestep at which it appeared; ``last_finite`` is the last
    iterate that was finite everywhere (the solver's state before that step, detached, on the
    solver's device); ``trace`` what the solver had logged so far.

    Choice (issue 4): a run that produces NaN stops at once and **raises** this error, so nothing
    downstream (the CLI, the benchmark runner) can mistake a diverged run for a result; callers
    that want the partial state catch it and read ``last_finite``."""

    def __init__(self, solver: str, step: int, timestep: int | None, last_finite: Tensor,
                 trace: dict[str, Any] | None = None):
        self.solver, self.step, self.timestep = solver, step, timestep
        self.last_finite = last_finite
        self.trace = trace or {}
        at = f"step {step}" + (f" (timestep {timestep})" if timestep is not None else "")
        super().__init__(f"solver {solver!r} produced NaN/Inf at {at}; the last finite iterate is "
                         "kept in the error's .last_finite (try a smaller step scale)")


def check_finite(name: str, x: Tensor, last: Tensor, step: int, timestep: int | None,
                 trace: dict[str, Any] | None = None) -> None:
    """Raise :class:`SolverDivergedError` when ``x`` holds a NaN/Inf."""
    if not torch.isfinite(x).all():
        raise SolverDivergedError(name, step, timestep, last.detach(), trace)


@dataclass
class Problem:
    """What a solver needs from the public measurement record."""

    operator: Any
    params: dict[str, Tensor]
    noise: Any
    image_shape: tuple[int, int, int, int]  # (B, C, H, W) of the unknown x

    @property
    def op_name(self) -> str:
        return str(getattr(self.operator, "registry_name", type(self.operator).__name__))


def unpack(solver: Any, y: Tensor, physics: Any, prior: Any) -> Problem:
    """Build the operator, its per-image parameters and the noise model from ``physics`` (a
    :class:`diffinv.physics.Measurement`, or any object with ``make_operator()``,
    ``make_noise()`` and ``params``), check the solver accepts the operator and that the unknown
    has the prior's domain (channels, size)."""
    if not isinstance(y, Tensor) or y.ndim < 2:
        raise ShapeError("y must be a batched tensor (B, ...)")
    if not torch.isfinite(y).all():
        raise NonFiniteError("the measurement y contains NaN/Inf")
    for need in ("make_operator", "make_noise"):
        if not callable(getattr(physics, need, None)):
            raise DiffinvError(f"physics must be a Measurement (with {need}()); got "
                               f"{type(physics).__name__}")
    if getattr(physics, "blind", False):
        raise DiffinvError(f"solver {solver.name!r} needs a known operator; this measurement is "
                           "blind (its operator parameters are hidden)")
    op = physics.make_operator()
    solver.check_operator(op)
    dev = y.device
    op = op.to(dev) if hasattr(op, "to") else op
    # floating parameters follow y's dtype (float32: Solver.__call__ converts y), so a record
    # made in float64 runs as well
    params = {k: (v.to(dev, y.dtype if v.is_floating_point() else v.dtype)
                  if isinstance(v, Tensor) else v)
              for k, v in dict(getattr(physics, "params", {}) or {}).items()}
    noise = physics.make_noise()
    try:
        in_shape = tuple(int(s) for s in op.in_shape(y.shape))
    except Exception as e:  # noqa: BLE001 -- any failure here means y does not fit the operator
        raise ShapeError(f"y of shape {tuple(y.shape)} does not fit operator "
                         f"{type(op).__name__}: {e}") from e
    want = tuple(getattr(prior, "image_shape", in_shape[1:]))
    if tuple(in_shape[1:]) != want:
        raise ShapeError(f"the measurement is of images {tuple(in_shape[1:])} but the prior "
                         f"{getattr(prior, 'name', '')!r} models images {want} (another domain)")
    return Problem(op, params, noise, in_shape)  # type: ignore[arg-type]


def gaussian_sigma(solver: Any, noise: Any) -> float:
    """sigma_y of a Gaussian (or absent) noise model; other models are refused."""
    name = getattr(noise, "name", "")
    if name == "none":
        return 0.0
    if name == "gaussian":
        return float(noise.sigma)
    raise DiffinvError(f"solver {solver.name!r} assumes Gaussian noise; the measurement has "
                       f"{noise!r} (use dps-nll for other noise models)")


def has_fast_svd(operator: Any) -> bool:
    """Whether ``operator`` is linear and gives a fast SVD (what ``requires = ("svd",)`` checks)."""
    return (bool(getattr(operator, "linear", False)) and callable(getattr(operator, "svd", None))
            and getattr(operator, "has_svd", True) is not False)


def operator_svd(problem: Problem, like: Tensor) -> Any:
    """The operator's fast SVD for the batch, on ``like``'s device and dtype."""
    svd = problem.operator.svd(problem.image_shape, **problem.params)
    return svd.to(like.device, like.dtype)


def progress(items: Iterable[Any], enabled: bool, desc: str, total: int | None = None
             ) -> Iterator[Any]:
    """``items`` wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False)
