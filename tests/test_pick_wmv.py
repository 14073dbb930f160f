"""benchmarks/tools/pick_wmv.py: the budget covers the peak iterations at the stated quantile, and
the rule is the cheapest one not distinguishable (paired) from the best pick."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "pick_wmv.py"
spec = importlib.util.spec_from_file_location("pick_wmv", TOOL)
pick_wmv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pick_wmv)


def row(task: str, index: int, peak: int, rules: dict[tuple[int, int], tuple[float, int]]) -> dict:
    metrics = {"oracle": 30.0, "psnr": 25.0, "trace:oracle_iteration": float(peak)}
    for (w, p), (psnr, stop) in rules.items():
        metrics[f"trace:wmv_{w}_{p}_psnr"] = psnr
        metrics[f"trace:wmv_{w}_{p}_iterations_run"] = float(stop)
    return {"cell": {"task": {"label": task}}, "index": index, "metrics": metrics}


def test_budget_is_the_rounded_up_quantile_of_the_peaks():
    data = pick_wmv.cases([row("sr", i, peak, {}) for i, peak in enumerate([100, 900, 1200, 4000])])
    assert pick_wmv.budget(data, 0.75, 500) == 1500  # 3rd of 4 peaks: 1200 -> 1,201 iterations
    assert pick_wmv.budget(data, 1.0, 500) == 4500
    assert pick_wmv.budget(data, 0.25, 500) == 500
    # each problem also gets the budget of its own peaks (the 0.75 nearest rank of {100, 900} is
    # 900: 1000; of {1200, 4000}: 4000 -> 4500)
    two = pick_wmv.cases([row("sr" if i < 2 else "deblur", i, peak, {(25, 100): (20.0, 50)})
                          for i, peak in enumerate([100, 900, 1200, 4000])])
    text = pick_wmv.render(two, [Path("x.jsonl")], 0.75, 500)
    assert "| sr | 2 | 30.00 | 25.00 | 100 | 900 | 900 | 1000 |" in text
    assert "| deblur | 2 | 30.00 | 25.00 | 1200 | 4000 | 4000 | 4500 |" in text


def test_the_cheapest_rule_not_distinguishable_from_the_best_is_chosen():
    # (100, 1000): best picks; (50, 300): 0.1 dB lower with noise, much cheaper; (25, 100): the
    # cheapest but 3 dB lower on every image (distinguishable), so not chosen
    noise = [0.3, -0.2, 0.25, -0.3, 0.1, -0.05]
    rows = [row("sr", i, 800, {(100, 1000): (28.0 + i, 2500), (50, 300): (27.9 + i + e, 900),
                              (25, 100): (25.0 + i, 300)}) for i, e in enumerate(noise)]
    data = pick_wmv.cases(rows)
    summary = pick_wmv.summarize(data, pick_wmv.budget(data, 0.9, 500))
    chosen, diffs = pick_wmv.choose(summary)
    assert chosen["rule"] == (50, 300)
    assert diffs[(25, 100)].low > 0 and diffs[(50, 300)].low <= 0
    text = pick_wmv.render(data, [Path("x.jsonl")], 0.9, 500)
    assert "**Budget: 1000 iterations**" in text and "**Rule: W = 50, P = 300.**" in text
    assert "| (100, 1000) | 30.50 |" in text and "| 0% | 1000 |" in text  # stops after the budget


def test_only_rules_recorded_in_every_case_compete():
    rows = [row("sr", 0, 10, {(25, 100): (20, 50), (50, 100): (21, 60)}),
            row("sr", 1, 10, {(25, 100): (20, 50)})]
    assert pick_wmv.rules(pick_wmv.cases(rows)) == [(25, 100)]
