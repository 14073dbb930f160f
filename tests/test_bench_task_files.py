"""Every committed task file in benchmarks/tasks/ parses and validates with its job kind (names of
solvers, operators, noise models, metrics, priors; options; N against the data split), without
doing any work; and the task files encode what their issues ask for."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffinv.bench import RunContext, load_plan
from diffinv.errors import MissingAssetError
from diffinv.solvers.early_stopping import DEFAULT_PATIENCE, DEFAULT_WINDOW

TASKS = Path(__file__).parents[1] / "benchmarks" / "tasks"
FILES = sorted(TASKS.glob("*.toml"))


def _validate(path: Path):
    plan = load_plan(path)
    ctx = RunContext(name=plan.name, kind=plan.kind.name, seed=plan.seed, device=plan.device,
                     options=dict(plan.options), metrics=list(plan.metrics))
    if plan.kind.validate is not None:
        try:
            plan.kind.validate(ctx, plan.cells)
        except MissingAssetError as e:  # restore checks N against the installed split
            pytest.skip(f"{path.name}: {e}")
    return plan


def test_the_task_files_are_found():
    names = {p.stem for p in FILES}
    assert {"linear", "tune_linear", "overhead", "dmplug_linear", "dmplug_nonlinear",
            "dmplug_noise", "dmplug_convergence"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_task_file_parses_and_validates(path):
    plan = _validate(path)
    assert plan.cells and plan.metrics
    text = path.read_text()
    assert text.startswith("#") and f"diffinv bench benchmarks/tasks/{path.name}" in text
    # (image operators only: "video-restore" checks its pairs of method and clip operator in its
    # validate, which _validate ran)
    if "task" in plan.cells[0].axes and "method" in plan.cells[0].axes \
            and plan.kind.name != "video-restore":
        from diffinv.bench.kinds.common import solver_params, task_parts
        from diffinv.physics import make_operator
        from diffinv.solvers import make_solver

        for c in plan.cells:  # every solver accepts its cell's operator (SVD, linearity)
            op, params, _ = task_parts(c["task"])
            try:
                solver = make_solver(c["method"].name, operator=op, **solver_params(c["method"])[0])
            except MissingAssetError as e:  # weights the task file names but git does not ship
                pytest.skip(f"{path.name}: {e}")
            solver.check_operator(make_operator(op, **params))


def _cells(plan) -> set[tuple[str, str]]:
    return {(c["method"].label, c["task"].label) for c in plan.cells}


def test_linear_table_has_ilvr_on_super_resolution_only_and_n_50():
    plan = _validate(TASKS / "linear.toml")
    cells = _cells(plan)
    tasks = {t for _, t in cells}
    assert len(tasks) == 7
    assert {t for m, t in cells if m == "ILVR"} == {"sr4", "sr4 s0.01"}
    for m in ("DPS", "MCG", "DDRM", "PiGDM", "DMPS", "ADMM-PnP"):
        assert {t for mm, t in cells if mm == m} == tasks
    assert {c.target for c in plan.cells} == {50}
    assert plan.options["dataset"] == "fashion32:test"


@pytest.mark.parametrize("name", ["tune_linear", "tune_nonlinear", "dmplug_convergence"])
def test_tuning_runs_never_touch_test_images(name):
    plan = load_plan(TASKS / f"{name}.toml")
    assert plan.options["dataset"].endswith(":valid")


def test_dmplug_noise_levels_come_from_the_eswmv_conversion():
    from diffinv.physics.noise import eswmv_noise

    plan = _validate(TASKS / "dmplug_noise.toml")
    kinds = {"gaussian": "gaussian", "impulse": "impulse", "shot": "poisson", "speckle": "speckle"}
    seen = set()
    for c in plan.cells:
        op, kind, level = c["task"].label.split()
        want = eswmv_noise(kinds[kind], {"L2": "low", "L4": "high"}[level])
        assert c["task"].params["noise"] == want
        seen.add((op, kind, level))
    assert len(seen) == 2 * 4 * 2 and {c.target for c in plan.cells} == {20}


@pytest.mark.parametrize("name", ["dmplug_linear", "dmplug_nonlinear", "dmplug_noise"])
def test_dmplug_tables_report_the_pick_and_the_oracle_apart(name):
    plan = load_plan(TASKS / f"{name}.toml")
    assert "psnr" in plan.metrics and "oracle" in plan.metrics
    dm = [c["method"] for c in plan.cells if c["method"].name == "dmplug"]
    assert dm
    # the ES-WMV rule of every table is the one chosen on validation images (the defaults):
    # either the run stops by it, or it runs the whole budget and reports that rule's pick
    rule = (DEFAULT_WINDOW, DEFAULT_PATIENCE)
    for m in dm:
        if m.params["early_stop"] == "wmv":
            assert (m.params["window"], m.params["patience"]) == rule
        else:
            assert [tuple(c) for c in m.params["wmv_candidates"]] == [rule]
            assert f"trace:wmv_{rule[0]}_{rule[1]}_psnr" in plan.metrics


def test_the_dmplug_cost_table_uses_the_chosen_rule():
    plan = load_plan(TASKS / "dmplug_cost.toml")
    assert {(c["method"].params["window"], c["method"].params["patience"]) for c in plan.cells} == \
        {(DEFAULT_WINDOW, DEFAULT_PATIENCE)}
