"""What the built-in job kinds share: axis values, data, priors, solvers, seeds, rehearsal.

The kinds whose grid is (method, task, prior) -- "restore", "dmplug-cost", "overhead" -- and
"prior-quality" read their axis values, images, priors and solvers the same way; this module is
that way, so that no kind imports another kind's internals:

* a *task* is a table with ``operator`` (a :mod:`diffinv.physics` operator name; default: the
  task's name), ``noise`` (a noise spec such as ``"gaussian:0.05"``, required) and the operator's
  parameters (every other key): :func:`task_parts`;
* a *prior* is a name, or a table with ``name``, optional ``path`` (a weights file) and
  ``precision`` (:data:`~diffinv.diffusion.prior.PRECISIONS`): :func:`prior_source`, loaded once
  per run by :func:`cached_prior` and identified by the SHA-256 of its weights
  (:func:`resolve_identity`);
* a *method* is a solver name with its parameters; ``preset = "tuned32"`` fills in the values
  tuned for the task's operator (part of the row identity), and ``true_operator = true`` makes it
  a labelled reference given a blind family's hidden parameters: :func:`solver_params`;
* ``[run] dataset = "DATASET:SPLIT"`` names the images: :func:`parse_dataset`,
  :func:`dataset_split`, :func:`dataset_images`;
* the random stream of a run: :func:`derived_seed`;
* checks before any work: :func:`validate_entries`, :func:`check_pairs`, and the rehearsal of a
  cell up to its solver's first network evaluation, :func:`call_until_first_module`.

The data, physics, solver and prior modules are imported when a function needs them, so the
runner and its tests do not depend on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import RunContext
from diffinv.bench.spec import Cell, Entry
from diffinv.errors import DiffinvError

#: keys of a task table that are not operator parameters ("noise" is required)
TASK_KEYS = ("operator", "noise")
#: keys a prior table may have besides name and label
PRIOR_KEYS = ("path", "precision")
#: a method key: the solver gets a blind family's hidden parameters (a labelled reference)
TRUE_OPERATOR = "true_operator"
#: a method key: take the solver's parameters tuned for the task's operator from this preset
PRESET = "preset"

#: what a value of each axis is, for ``diffinv bench --help`` (a kind's ``help``)
AXIS_HELP = {
    "method": "a solver name (`diffinv solve --help` lists them), or a table with name and the "
              "solver's parameters",
    "task": f"a table with {TASK_KEYS[0]} (an operator name; default: the task's name), "
            f"{TASK_KEYS[1]} (a noise spec such as \"gaussian:0.05\"; required) and the "
            "operator's parameters (every other key)",
    "prior": f"a prior name, or a table with name and optional {PRIOR_KEYS[0]} (a weights file) "
             f"and {PRIOR_KEYS[1]} (\"fp32\", the default, or \"bf16\"); identified by the SHA-256 "
             "of its weights",
}
#: ``[run] threads`` of the timing kinds, for ``diffinv bench --help``
THREADS_HELP = "torch intra-op threads (0: torch's default)"
#: ``[run] dataset``, for ``diffinv bench --help``
DATASET_HELP = ("DATASET:SPLIT of the images, e.g. \"fashion32:test\"; image i of a cell is image i "
                "of the split")


def derived_seed(run_seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream of a run (SHA-256 of both)."""
    d = hashlib.sha256(f"diffinv-bench:{int(run_seed)}:{stream}".encode()).digest()
    return int.from_bytes(d[:8], "little") & ((1 << 63) - 1)


def parse_dataset(spec: str) -> tuple[str, str]:
    """``"fashion32:test"`` -> ``("fashion32", "test")``; anything else is a BenchConfigError."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(parts):
        raise BenchConfigError(f"[run] dataset {spec!r}: expected DATASET:SPLIT, e.g. "
                               "fashion32:test")
    return parts[0], parts[1]


def task_parts(task: Entry) -> tuple[str, dict[str, Any], str]:
    """``(operator name, operator parameters, noise spec)`` of a task entry."""
    params = dict(task.params)
    op = params.pop("operator", task.name)
    noise = params.pop("noise", None)
    if not isinstance(op, str):
        raise BenchConfigError(f"task {task.label!r}: 'operator' must be an operator name")
    if not isinstance(noise, str):
        raise BenchConfigError(f"task {task.label!r} needs a 'noise' spec such as "
                               "\"gaussian:0.05\"")
    return op, params, noise


def prior_source(prior: Entry) -> str:
    """What :func:`diffinv.load_prior` is given for a prior entry: its ``path``, else its name."""
    extra = set(prior.params) - set(PRIOR_KEYS)
    if extra:
        raise BenchConfigError(f"prior {prior.label!r}: unknown key(s) {sorted(extra)} (a prior "
                               "is a name, or a table with name and optional path and precision)")
    from diffinv.diffusion.prior import PRECISIONS

    if prior.params.get("precision", "fp32") not in PRECISIONS:
        raise BenchConfigError(f"prior {prior.label!r}: precision must be one of {PRECISIONS}")
    return str(prior.params.get("path", prior.name))


def cached_prior(ctx: RunContext, prior: Entry) -> Any:
    """The prior of an entry on the run's device, loaded once per run."""
    from diffinv import load_prior

    return ctx.cached(f"prior:{prior.digest}", lambda: load_prior(
        prior_source(prior), device=ctx.device,
        precision=str(prior.params.get("precision", "fp32"))))


def solver_params(method: Entry) -> tuple[dict[str, Any], bool]:
    """``(solver parameters, true_operator)``: a method entry with ``true_operator = true`` is a
    labelled *reference* that receives the hidden parameters of a blind family (the true kernel,
    angle or zoom) as public ones, e.g. DPS given the true kernel beside the blind methods."""
    params = dict(method.params)
    known = params.pop(TRUE_OPERATOR, False)
    if not isinstance(known, bool):
        raise BenchConfigError(f"method {method.label!r}: {TRUE_OPERATOR} must be true or false")
    return params, known


def solver_factory() -> Callable[..., Any]:
    """:func:`diffinv.solvers.make_solver`, imported when a job first needs it."""
    try:
        from diffinv.solvers import make_solver
    except ImportError as e:
        raise DiffinvError(f"a benchmark job kind needs diffinv.solvers.make_solver: {e}") from None
    return make_solver


def validate_entries(cells: Sequence[Cell], skip: tuple[str, ...] = ()) -> None:
    """Build every method, task (operator + noise) and prior source of the grid once, so a bad
    name or parameter fails before any work; axes in ``skip`` are left to the caller."""
    from diffinv.physics import make_noise, make_operator

    make_solver = solver_factory()
    seen: set[str] = set()
    for cell in cells:
        for axis, entry in cell:
            if axis in skip or entry.digest in seen:
                continue
            seen.add(entry.digest)
            if axis == "method":
                make_solver(entry.name, **solver_params(entry)[0])  # a preset's "*" part too
            elif axis == "task":
                op, params, noise = task_parts(entry)
                make_operator(op, **params)
                make_noise(noise)
            else:
                prior_source(entry)
    check_pairs(cells)


def check_pairs(cells: Sequence[Cell]) -> None:
    """Every (method, task) pair of the grid: the solver, built as a cell builds it, accepts the
    task's operator (``Solver.check_operator``: linear, SVD, a downsampling...), so a grid that
    would stop at its first incompatible cell fails before anything is written."""
    from diffinv.physics import make_operator

    make_solver = solver_factory()
    seen: set[tuple[str, str]] = set()
    for cell in cells:
        if "method" not in cell.axes or "task" not in cell.axes:
            continue
        method, task = cell["method"], cell["task"]
        if (method.digest, task.digest) in seen:
            continue
        seen.add((method.digest, task.digest))
        op_name, op_params, _ = task_parts(task)
        solver = make_solver(method.name, operator=op_name, **solver_params(method)[0])
        check = getattr(solver, "check_operator", None)
        if check is None:
            continue
        try:
            check(make_operator(op_name, **op_params))
        except DiffinvError as e:
            raise BenchConfigError(f"method {method.label!r} on task {task.label!r}: {e}") from None


def resolve_identity(ctx: RunContext, axis: str, entry: Entry, cell: Cell | None = None
                     ) -> dict[str, Any]:
    """A prior's identity is the SHA-256 of its weights file. A method that names a ``preset`` is
    identified by the values the preset sets for the cell's operator (the whole per-operator table
    when the cell has no task): retuning the preset for that operator recomputes the cell, while
    an entry added for another operator leaves it alone. (A job kind's ``resolve``.)"""
    if axis == "method":
        if PRESET not in entry.params:
            return {}
        from diffinv.solvers.presets import preset_params, preset_table

        name = str(entry.params[PRESET])
        if cell is None or "task" not in cell.axes:
            return {"preset": name, "table": preset_table(name, entry.name)}
        return {"preset": name, "params": preset_params(name, entry.name, task_parts(cell["task"])[0])}
    if axis != "prior":
        return {}
    prior = cached_prior(ctx, entry)
    sha = getattr(prior, "sha256", None)
    if not sha:
        raise DiffinvError(f"prior {entry.label!r} has no SHA-256: benchmarks need pinned weights")
    return {"sha256": sha}


def dataset_split(ctx: RunContext) -> Any:
    """The split named by ``[run] dataset``, loaded once per run."""
    from diffinv.data import load_split

    name, split = parse_dataset(str(ctx.options["dataset"]))
    return ctx.cached(f"data:{name}:{split}", lambda: load_split(name, split))


def dataset_images(ctx: RunContext, indices: Sequence[int]) -> tuple[Any, Any]:
    """``(images, labels)`` ``indices`` of the ``[run] dataset`` split, on the run's device."""
    import torch

    data = dataset_split(ctx)
    if max(indices) >= len(data):
        raise DiffinvError(f"image index {max(indices)} is out of range: "
                           f"{ctx.options['dataset']} has {len(data)} images")
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    return data.images[idx].to(ctx.device), data.labels[idx].to(ctx.device)


class _Rehearsed(BaseException):
    """Ends a rehearsal at the solver's first network (module) evaluation. A BaseException, so
    that a solver's ``except Exception`` cannot mistake it for a failure of its own."""


def call_until_first_module(where: str, solver: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``solver(*args, **kwargs)`` up to its first evaluation of a torch module (a network or
    an operator) and stop it there: whatever the solver checks on entry runs, no real work does.
    A :class:`~diffinv.errors.DiffinvError` it raises becomes a :class:`BenchConfigError` headed
    by ``where`` (the cell). A solver that evaluates no module (a classical method) runs to the
    end."""
    import torch

    def stop(module: Any, inputs: Any) -> None:
        raise _Rehearsed

    handle = torch.nn.modules.module.register_module_forward_pre_hook(stop)
    try:
        solver(*args, **kwargs)
    except _Rehearsed:
        pass
    except DiffinvError as e:
        raise BenchConfigError(f"{where}: {e}") from None
    finally:
        handle.remove()


def rehearsal_cells(cells: Sequence[Cell]) -> Iterator[tuple[Cell, str]]:
    """The first cell of each (method, task, prior) of ``cells``, in order, with its
    :func:`cell_name`: the cells a kind's ``rehearse`` runs."""
    seen: set[tuple[str, ...]] = set()
    for cell in cells:
        key = tuple(cell[a].digest for a in ("method", "task", "prior"))
        if key in seen:
            continue
        seen.add(key)
        yield cell, cell_name(cell)


def cell_name(cell: Cell, axes: Sequence[str] = ("method", "task", "prior")) -> str:
    """``method 'DPS' on task 'sr4' with prior 'fashion32'``: a cell in an error message."""
    words = {"method": "method", "task": "on task", "prior": "with prior"}
    return " ".join(f"{words.get(a, a)} {cell[a].label!r}" for a in axes if a in cell.axes)
