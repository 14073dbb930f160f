"""Property-based tests of what diffinv loads from users (issue 36): whatever the input, a loader
returns or raises a :class:`~diffinv.errors.DiffinvError` subclass, never another exception.

* measurement records (``spec.json`` + safetensors) read by :func:`diffinv.physics.load_measurement`,
  random and mutated from valid ones (keys dropped, replaced or retyped; tensors dropped,
  reshaped, retyped, made non-finite; files truncated, bytes flipped, files removed); a record
  that loads must also build its operator and noise model and apply the operator to images of
  the shape it names;
* task files (TOML text) read by the bench loader (:func:`diffinv.bench.load_plan`) and checked by
  their job kind's ``validate``, random and mutated from valid ones of each built-in kind;
* ``-p KEY=VALUE`` strings parsed by :func:`diffinv.cli.measure.parse_settings` and given to
  :func:`diffinv.physics.make_operator` (an operator that is built must also measure an image)
  and :func:`diffinv.solvers.make_solver`.

Sized to run in well under a minute on one core (``DIFFINV_PROPERTY_EXAMPLES`` sets the examples
per test for a longer search).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from diffinv.errors import DiffinvError

#: examples per test; DIFFINV_PROPERTY_EXAMPLES=2000 for a longer hunt
EXAMPLES = int(os.environ.get("DIFFINV_PROPERTY_EXAMPLES", "300"))
FAST = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- shared values
INTERESTING_NUMBERS = [0, -1, 1, 2, 3, 9, 33, 1000, 2**31, 2**63, -(2**63) - 1, 0.0, -0.5, 0.5,
                       2.5, 1e-300, 1e300, math.inf, -math.inf, math.nan]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from(INTERESTING_NUMBERS),
    st.integers(-50, 50),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.text(max_size=10),
    st.sampled_from(["", "gaussian:0.05", "none", "poisson:0", "fashion32", "cpu", "dps",
                     "gaussian-blur", "blind-motion-blur", "circular", "x" * 40]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=8)


def _retype(v: Any) -> list[Any]:
    """The same value in other JSON types."""
    out: list[Any] = [str(v), [v], {"v": v}, None, not bool(v)]
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        out += [float(v) + 0.5, int(v) * -1]
    return out


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a nested dict/list."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


PLAUSIBLE_TEXT = ["gaussian:0.05", "gaussian:-1", "gaussian:nan", "poisson:25", "none",
                  "impulse:0.1", "speckle:0.2", "gaussian-blur", "blind-motion-blur",
                  "sr-avgpool", "inpaint-random", "identity", "circular", "reflect", "fashion32",
                  "mnist32", "float16", "int64", "truth.safetensors", "", "../x", "dps", "ddrm"]


def _tweak(data: st.DataObject, v: Any) -> Any:
    """Another value of the same JSON type: the edits a hand-edited file gets."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return data.draw(st.sampled_from([0, -1, 1, 2, v + 1, v - 1, 2 * v, 33, 10**6]))
    if isinstance(v, float):
        return data.draw(st.sampled_from([0.0, -v, 2 * v, 1e-12, 1e12, math.nan, math.inf]))
    if isinstance(v, str):
        return data.draw(st.sampled_from(PLAUSIBLE_TEXT))
    if isinstance(v, list):
        if v and data.draw(st.booleans()):
            return v[:-1]
        return v + v[-1:] if v else [data.draw(scalars)]
    if isinstance(v, dict):
        return {k: x for i, (k, x) in enumerate(v.items()) if i}
    return data.draw(scalars)


def mutate_tree(data: st.DataObject, tree: dict, steps: int) -> dict:
    """``steps`` random edits of a nested dict: tweak a value within its type, drop, replace,
    retype, add a key."""
    tree = copy.deepcopy(tree)
    for _ in range(steps):
        paths = _paths(tree)
        if not paths:
            tree[data.draw(st.text(max_size=6))] = data.draw(json_values)
            continue
        path = data.draw(st.sampled_from(paths))
        parent, key = _get(tree, path[:-1]), path[-1]
        how = data.draw(st.sampled_from(["tweak", "tweak", "drop", "replace", "retype", "add"]))
        note(f"{how} {path}")
        if how == "tweak":
            parent[key] = _tweak(data, parent[key])
        elif how == "drop":
            del parent[key]
        elif how == "replace":
            parent[key] = data.draw(json_values)
        elif how == "retype":
            parent[key] = data.draw(st.sampled_from(_retype(parent[key])))
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(json_values)
        else:
            parent.append(data.draw(json_values))
    return tree


def mutate_bytes(data: st.DataObject, blob: bytes) -> bytes:
    """Truncate, flip a byte, or cut a chunk out of ``blob``."""
    if not blob:
        return data.draw(st.binary(max_size=20))
    how = data.draw(st.sampled_from(["truncate", "flip", "cut", "garbage"]))
    at = data.draw(st.integers(0, len(blob) - 1))
    note(f"bytes: {how} at {at} of {len(blob)}")
    if how == "truncate":
        return blob[:at]
    if how == "flip":
        bit = 1 << data.draw(st.integers(0, 7))
        return blob[:at] + bytes([blob[at] ^ bit]) + blob[at + 1:]
    if how == "cut":
        return blob[:at] + blob[at + data.draw(st.integers(1, 64)):]
    return blob[:at] + data.draw(st.binary(min_size=1, max_size=16)) + blob[at:]


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="diffinv-properties-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _fresh(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root))


# ------------------------------------------------------------------------ measurement records
RECORD_BASES = [("gaussian-blur", "gaussian:0.05"), ("inpaint-random", "none"),
                ("blind-motion-blur", "poisson:25"), ("sr-avgpool", "gaussian:0.1"),
                ("motion-blur", "impulse:0.1")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.uint8, torch.bool]


@functools.cache
def record_bases() -> tuple[tuple[str, dict, dict[str, bytes]], ...]:
    """Valid records, as (operator, spec, {file name: bytes}), written by save_measurement."""
    from diffinv.physics import measure, save_measurement

    root = Path(tempfile.mkdtemp(prefix="diffinv-records-"))
    x = torch.linspace(-0.8, 0.8, 2 * 16 * 16).reshape(2, 1, 16, 16)
    out = []
    try:
        for op, noise in RECORD_BASES:
            d = root / op
            save_measurement(measure(x, op, noise, 0, domain="fashion32"), d)
            files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
            out.append((op, json.loads(files["spec.json"]), files))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tuple(out)


def random_tensor(data: st.DataObject) -> torch.Tensor:
    shape = data.draw(st.lists(st.integers(0, 5), max_size=5))
    dtype = data.draw(st.sampled_from(DTYPES))
    fill = data.draw(st.sampled_from([0.0, 0.5, -0.5, 1.0, 3.0, -300.0, math.nan, math.inf]))
    t = torch.full(shape, fill if dtype.is_floating_point else 1.0).to(dtype)
    return t


def mutate_tensors(data: st.DataObject, tensors: dict[str, torch.Tensor]) -> dict:
    tensors = dict(tensors)
    how = data.draw(st.sampled_from(["drop", "replace", "dtype", "nonfinite", "add", "reshape"]))
    names = sorted(tensors)
    if not names or how == "add":
        tensors[data.draw(st.sampled_from(["y", "x", "param.kernel", "param.mask", "true.kernel",
                                           "config.kernel", "junk"]))] = random_tensor(data)
        return tensors
    name = data.draw(st.sampled_from(names))
    note(f"tensor {how} {name}")
    t = tensors[name]
    if how == "drop":
        del tensors[name]
    elif how == "replace":
        tensors[name] = random_tensor(data)
    elif how == "dtype":
        tensors[name] = t.to(data.draw(st.sampled_from(DTYPES)))
    elif how == "nonfinite" and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf, 1e30]))
        tensors[name] = t
    elif how == "reshape" and t.numel():
        tensors[name] = t.reshape(-1) if t.ndim != 1 else t.reshape(1, -1)
    return tensors


def write_record(d: Path, files: dict[str, bytes | None]) -> None:
    """Write a record's files; ``None`` makes a folder of that name instead of a file."""
    for name, blob in files.items():
        if blob is None:
            (d / name).mkdir()
        else:
            (d / name).write_bytes(blob)


def load_and_use(d: Path) -> None:
    """Load the record at ``d``; one that loads must rebuild its operator and noise model and
    measure images of the shape ``y`` comes from (any failure there a DiffinvError)."""
    from diffinv.physics import load_measurement

    try:
        m = load_measurement(d)
    except DiffinvError as e:
        note(f"refused: {e}")
        event(f"record refused: {type(e).__name__}")
        return
    event("record loaded")
    for truth in (True, False):
        try:
            m = load_measurement(d, truth=truth)
        except DiffinvError:
            return
    op = m.make_operator()
    noise = m.make_noise()
    shape = tuple(op.in_shape(m.y.shape))
    x = torch.zeros(shape)
    params = m.params if not m.blind else m.true_params
    if m.blind and not params:
        params = op.draw_params([torch.Generator() for _ in range(shape[0])], shape[1:])
    with torch.no_grad():
        ax = op(x, **params)
        noise.sample(ax, [torch.Generator() for _ in range(shape[0])])
        noise.nll(m.y, ax) if tuple(ax.shape) == tuple(m.y.shape) else None


@FAST
@given(data=st.data())
def test_mutated_measurement_records_load_or_are_refused(workdir, data):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    op, spec, files = data.draw(st.sampled_from(record_bases()))
    note(f"base: {op}")
    files = dict(files)
    spec = mutate_tree(data, spec, data.draw(st.integers(0, 3)))
    files["spec.json"] = json.dumps(spec).encode()
    for name in ("measurement.safetensors", "truth.safetensors"):
        if name in files and data.draw(st.booleans()):
            tensors = mutate_tensors(data, st_load(files[name]))
            files[name] = st_save({k: v.contiguous() for k, v in tensors.items()})
    for _ in range(data.draw(st.integers(0, 2))):
        name = data.draw(st.sampled_from(sorted(files)))
        how = data.draw(st.sampled_from(["bytes", "delete", "folder", "empty"]))
        note(f"file {how} {name}")
        if how == "bytes" and files[name] is not None:
            files[name] = mutate_bytes(data, files[name])
        elif how == "delete":
            del files[name]
        elif how == "folder":
            files[name] = None
        else:
            files[name] = b""
    d = _fresh(workdir)
    write_record(d, files)
    load_and_use(d)


@FAST
@given(data=st.data())
def test_random_measurement_records_load_or_are_refused(workdir, data):
    from safetensors.torch import save as st_save

    from diffinv.physics.measurement import SPEC_SCHEMA
    from diffinv.physics.registry import OPERATORS

    spec = {"format": "diffinv-measurement", "version": 1}
    for key in SPEC_SCHEMA:
        if data.draw(st.integers(0, 5)):
            spec[key] = data.draw(json_values)
    if data.draw(st.booleans()):
        spec["operator"] = data.draw(st.sampled_from(sorted(OPERATORS)))
    if data.draw(st.booleans()):
        spec["noise"] = data.draw(st.sampled_from(["none", "gaussian:0.1", "poisson:-1",
                                                   "gaussian:nan", "impulse:2"]))
    tensors = {name: random_tensor(data)
               for name in data.draw(st.lists(st.sampled_from(
                   ["y", "param.kernel", "param.mask", "config.kernel", "param.angle"]),
                   max_size=3, unique=True))}
    truth = {name: random_tensor(data)
             for name in data.draw(st.lists(st.sampled_from(["x", "true.kernel"]), max_size=2,
                                            unique=True))}
    files: dict[str, bytes | None] = {"spec.json": json.dumps(spec).encode(),
                                      "measurement.safetensors": st_save(tensors)}
    if truth:
        files["truth.safetensors"] = st_save(truth)
    d = _fresh(workdir)
    write_record(d, files)
    load_and_use(d)


# ------------------------------------------------------------------------------- task files
TASK_BASES = {
    "restore": """
methods = ["dps", {name = "ddrm", steps = 20, eta = 0.85, label = "DDRM"}]
tasks = [{name = "sr4", operator = "sr-avgpool", factor = 4, noise = "gaussian:0.05"},
         {name = "deblur", operator = "gaussian-blur", noise = "gaussian:0.05"}]
priors = ["fashion32"]
metrics = ["psnr", "ssim"]

[[cell]]
methods = ["dps", "DDRM"]
tasks = ["sr4"]
n_images = 3

[[cell]]
method = {name = "dps", steps = 10, label = "DPS-10"}
task = "deblur"

[run]
name = "props"
kind = "restore"
title = "t"
notes = "n"
seed = 0
output = "out"
dataset = "fashion32:test"
n_images = 4
batch_size = 2
device = "cpu"
plugins = []
reuse = ["other"]
""",
    "network-speed": """
configs = [
    {name = "tiny", base_channels = 8, channel_mults = [1, 2], attention_resolutions = [8]},
]
batch_sizes = [1, 2]
passes = ["forward", "forward+backward"]
metrics = ["ms/call", "ms/image", "Mparams"]

[run]
kind = "network-speed"
repeats = 6
calls = 2
warmup = 1
threads = 0
dtype = "float32"
""",
    "prior-quality": """
priors = ["fashion32", {name = "mnist32", label = "m"}]
samplers = [{name = "ddim", steps = 100, eta = 0.0, label = "DDIM-100"}, "ddpm"]
metrics = ["fid", "fid-floor"]

[run]
kind = "prior-quality"
n_samples = 8
reference = "test"
floor = "train"
chunk = 4
""",
    "overhead": """
methods = [{name = "dps", steps = 50}, {name = "ddrm", steps = 20}]
tasks = [{name = "gauss-deblur", operator = "gaussian-blur", noise = "gaussian:0.05"}]
priors = ["fashion32"]
batch_sizes = [1, 4]
metrics = ["ratio", "solver_s"]

[run]
kind = "overhead"
repeats = 6
warmup = 1
profile = false
""",
    "dmplug-cost": """
methods = [{name = "dmplug", steps = 3, iterations = 20, label = "S=3"}]
tasks = [{name = "sr4", operator = "sr-avgpool", factor = 4, noise = "gaussian:0.01"}]
priors = ["fashion32"]
metrics = ["iterations", "stop_iteration"]

[run]
kind = "dmplug-cost"
dataset = "fashion32:test"
n_images = 2
""",
}


def _toml_key(k: str) -> str:
    return json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    return '"null"'  # TOML has no null: a string where JSON had one


def to_toml(doc: dict) -> str:
    """A TOML text of ``doc``: plain keys first, then tables, then arrays of tables."""
    lines = []
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items()
              if isinstance(v, list) and v and all(isinstance(b, dict) for b in v)}
    for k, v in doc.items():
        if k not in tables and k not in arrays:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in tables.items():
        lines.append(f"[{_toml_key(k)}]")
        lines += [f"{_toml_key(str(kk))} = {_toml_value(vv)}" for kk, vv in v.items()]
    for k, blocks in arrays.items():
        for b in blocks:
            lines.append(f"[[{_toml_key(k)}]]")
            lines += [f"{_toml_key(str(kk))} = {_toml_value(vv)}" for kk, vv in b.items()]
    return "\n".join(lines) + "\n"


def _fake_split(dataset: str, split: str):
    from diffinv.data import ImageSet

    return ImageSet(dataset, split, torch.zeros(6, 1, 32, 32), torch.zeros(6, dtype=torch.long))


def load_and_validate(path: Path) -> None:
    """Load a task file as ``diffinv bench`` does, and let its job kind check every name (the
    data split is a stand-in of 6 images; nothing is computed)."""
    import diffinv.data
    from diffinv.bench import RunContext, load_plan, run_benchmark
    from diffinv.bench.plan import select_cells

    try:
        plan = load_plan(path)
        select_cells(plan.cells, None)
        ctx = RunContext(name=plan.name, kind=plan.kind.name, seed=plan.seed, device=plan.device,
                         options=dict(plan.options), metrics=list(plan.metrics))
        if plan.kind.validate is not None:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(diffinv.data, "load_split", _fake_split)
                plan.kind.validate(ctx, plan.cells)
        for cell in plan.cells:  # the identity of a method (its preset) is resolved by name
            if plan.kind.resolve is not None and "method" in cell.axes:
                plan.kind.resolve(ctx, "method", cell["method"], cell)
            plan.cell_key(cell)
        if plan.out_dir.is_relative_to(path.parent):  # its output checked; no rows there yet
            run_benchmark(path, report_only=True, progress=False)
    except DiffinvError as e:
        note(f"refused: {e}")
        event("task file refused")
        return
    event("task file loaded and validated")


def _safe_plugins(data: st.DataObject, run: Any) -> None:
    """``run["plugins"]`` replaced by names that import nothing (or by a non-list): a random
    string must never import an arbitrary module."""
    if isinstance(run, dict) and "plugins" in run and run["plugins"] != []:
        run["plugins"] = data.draw(st.sampled_from([
            run["plugins"] if not isinstance(run["plugins"], list | str) else [],
            ["no_such_plugin_module"], ["."], ["..x"], [".rel"], [""], [" "], [1], [None],
            "no_such_plugin_module", ["no_such_package.sub", "."]]))


@FAST
@given(data=st.data())
def test_mutated_task_files_load_or_are_refused(workdir, data):
    import tomllib

    kind = data.draw(st.sampled_from(sorted(TASK_BASES)))
    doc = tomllib.loads(TASK_BASES[kind])
    doc = mutate_tree(data, doc, data.draw(st.integers(1, 4)))
    _safe_plugins(data, doc.get("run"))
    text = to_toml(doc)
    if data.draw(st.integers(0, 4)) == 0:
        text = mutate_bytes(data, text.encode()).decode("utf-8", "replace")
    note(text)
    d = _fresh(workdir)
    (d / "task.toml").write_text(text, encoding="utf-8")
    load_and_validate(d / "task.toml")


@FAST
@given(data=st.data())
def test_random_task_files_load_or_are_refused(workdir, data):
    from diffinv.bench.catalog import job_kinds

    grid_keys = ["methods", "tasks", "priors", "metrics", "configs", "batch_sizes", "passes",
                 "samplers", "grid", "cell", "method", "junk"]
    run_keys = ["name", "kind", "title", "notes", "seed", "output", "batch_size", "device",
                "plugins", "reuse", "dataset", "n_images", "repeats", "calls", "warmup",
                "threads", "dtype", "n_samples", "reference", "floor", "chunk", "profile"]
    doc: dict[str, Any] = {k: data.draw(json_values)
                           for k in data.draw(st.lists(st.sampled_from(grid_keys), max_size=5,
                                                       unique=True))}
    run = {k: data.draw(json_values)
           for k in data.draw(st.lists(st.sampled_from(run_keys), max_size=8, unique=True))}
    if data.draw(st.booleans()):
        run["kind"] = data.draw(st.sampled_from(job_kinds()))
    _safe_plugins(data, run)
    if data.draw(st.integers(0, 5)):
        doc["run"] = run
    blob = to_toml(doc)
    if data.draw(st.integers(0, 3)) == 0:
        blob = data.draw(st.text(max_size=200))
    note(blob)
    d = _fresh(workdir)
    (d / "task.toml").write_text(blob, encoding="utf-8", errors="surrogatepass")
    load_and_validate(d / "task.toml")


# ----------------------------------------------------------------------- -p KEY=VALUE strings
VALUE_TEXTS = ["0", "-1", "1", "2.5", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "[]",
               "{}", "null", "true", "false", '"x"', "[1, 2]", '{"a": 1}', "", "abc", "9",
               "33", "1e-300", "0.0", "-0.5", "[[0.5, 0.5]]", "fashion32", "circular", "ddim"]


def setting_strings(keys: list[str]) -> st.SearchStrategy[str]:
    key = (st.sampled_from(keys) | st.text(max_size=6)) if keys else st.text(max_size=6)
    value = (st.sampled_from(VALUE_TEXTS) | st.text(max_size=8)
             | json_values.map(lambda v: json.dumps(v)))
    sep = st.sampled_from(["=", "=", "=", " = ", ""])
    return st.tuples(key, sep, value).map(lambda t: f"{t[0]}{t[1]}{t[2]}")


def _operator_names() -> list[str]:
    from diffinv.physics.registry import OPERATORS

    return sorted(n for n in OPERATORS if n != "bkse-blur")  # bkse: the user's weights file


@FAST
@given(data=st.data())
def test_operator_settings_build_and_measure_or_are_refused(data):
    from diffinv.cli.measure import parse_settings
    from diffinv.physics import make_operator, measure
    from diffinv.physics.registry import operator_arguments

    name = data.draw(st.sampled_from(_operator_names()))
    items = data.draw(st.lists(setting_strings(operator_arguments(name)), max_size=3))
    note(f"{name} {items}")
    try:
        op = make_operator(name, **parse_settings(items))
    except DiffinvError as e:
        note(f"refused: {e}")
        return
    x = torch.linspace(-0.5, 0.5, 32 * 32).reshape(1, 1, 32, 32)
    try:
        measure(x, op, "gaussian:0.01", 0)
    except DiffinvError as e:
        note(f"refused at measure: {e}")


def _solver_names() -> list[str]:
    from diffinv.solvers import list_solvers

    return [n for n, _, _ in list_solvers()]


@FAST
@given(data=st.data())
def test_solver_settings_build_or_are_refused(data):
    import inspect

    from diffinv.cli.measure import parse_settings
    from diffinv.solvers import make_solver
    from diffinv.solvers.base import _REGISTRY

    name = data.draw(st.sampled_from(_solver_names()))
    keys = [k for k in inspect.signature(_REGISTRY[name]).parameters] + ["preset", "operator"]
    items = data.draw(st.lists(setting_strings(keys), max_size=3))
    note(f"{name} {items}")
    try:
        make_solver(name, **parse_settings(items))
    except DiffinvError as e:
        note(f"refused: {e}")


@pytest.mark.parametrize("kind", sorted(TASK_BASES))
def test_the_task_file_bases_are_valid(workdir, kind):
    """The mutations start from task files that load and validate."""
    import diffinv.data
    from diffinv.bench import RunContext, load_plan

    d = _fresh(workdir)
    (d / "task.toml").write_text(TASK_BASES[kind])
    plan = load_plan(d / "task.toml")
    ctx = RunContext(name=plan.name, kind=plan.kind.name, seed=plan.seed, device=plan.device,
                     options=dict(plan.options), metrics=list(plan.metrics))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffinv.data, "load_split", _fake_split)
        plan.kind.validate(ctx, plan.cells)
    assert plan.kind.name == kind and plan.cells
