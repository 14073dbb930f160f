"""benchmarks/tools/dmplug_stops.py: counts the runs ES-WMV stopped before the budget and gives
the paired oracle - psnr gap with its Student-t interval, per cell."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "dmplug_stops.py"
spec = importlib.util.spec_from_file_location("dmplug_stops", TOOL)
dmplug_stops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dmplug_stops)


def row(task: str, index: int, run: int, oracle: float, psnr: float, budget: int = 2000) -> dict:
    cell = {"method": {"label": "DMPlug+ES-WMV", "params": {"iterations": budget}},
            "task": {"label": task}, "prior": {"label": "fashion32"}}
    metrics = {"oracle": oracle, "psnr": psnr, "trace:iterations_run": float(run)}
    return {"cell": cell, "index": index, "metrics": metrics}


def test_stops_before_the_budget_are_counted_and_the_gap_interval_is_paired():
    rows = [row("sr", 0, 2000, 21.0, 20.0), row("sr", 1, 1999, 25.0, 24.5), row("sr", 2, 600, 30.0, 30.0),
            # another method of the same table, without DMPlug's columns: skipped
            {"cell": {"method": {"label": "DPS", "params": {}}, "task": {"label": "sr"},
                      "prior": {"label": "fashion32"}}, "index": 0, "metrics": {"psnr": 19.0}}]
    cases = dmplug_stops.stop_cases(rows)
    assert list(cases) == [("DMPlug+ES-WMV", "sr", "fashion32")]
    text = dmplug_stops.render(cases, "cmd", worst=2)
    # gaps 1.0, 0.5, 0.0: mean 0.5, sd 0.5, t(0.975, 2) = 4.3027 -> half-width 4.3027 * 0.5 / sqrt(3)
    hw = 4.302653 * 0.5 / math.sqrt(3)
    assert f"| DMPlug+ES-WMV | sr | fashion32 | 3 | 2 | 2000 | 1999 [600, 2000] | 0.50 ± {hw:.2f} | " \
           "0 (2000) 1.00, 1 (1999) 0.50 |" in text


def test_cells_are_kept_apart():
    rows = [row("sr", 0, 500, 21.0, 20.0), row("inpaint", 0, 2000, 22.0, 22.0)]
    text = dmplug_stops.render(dmplug_stops.stop_cases(rows), "cmd")
    assert "| inpaint | fashion32 | 1 | 0 | 2000 | 2000 [2000, 2000] | 0.00 |" in text
    assert "| sr | fashion32 | 1 | 1 | 2000 | 500 [500, 500] | 1.00 |" in text


def test_rows_of_other_methods_with_nan_columns_are_skipped():
    # a restore table writes nan where a column does not apply (DPS has no oracle, no iterations)
    dps = {"cell": {"method": {"label": "DPS (L2)", "params": {"scale": 0.3}}, "task": {"label": "sr"},
                    "prior": {"label": "fashion32"}}, "index": 0,
           "metrics": {"oracle": math.nan, "psnr": 19.0, "trace:iterations_run": math.nan}}
    cases = dmplug_stops.stop_cases([dps, row("sr", 0, 700, 21.0, 20.5)])
    assert cases == {("DMPlug+ES-WMV", "sr", "fashion32"): [(0, 700, 2000, 0.5)]}
