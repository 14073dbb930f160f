"""benchmarks/tools/pick_wmv.py: the budget covers the peak iterations at the stated quantile, and
the rule is the cheapest one not distinguishable (paired) from the best pick."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "pick_wmv.py"
spec = importlib.util.spec_from_file_location("pick_wmv", TOOL)
pick_wmv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pick_wmv)


def row(task: str, index: int, peak: int, rules: dict[tuple[int, int], tuple[float, int]]) -> dict:
    metrics = {"oracle": 30.0, "psnr": 25.0, "trace:oracle_iteration": float(peak)}
    for (w, p), (psnr, stop) in rules.items():
        metrics[f"trace:wmv_{w}_{p}_psnr"] = psnr
        metrics[f"trace:wmv_{w}_{p}_iterations_run"] = float(stop)
    return {"cell": {"task": {"label": task}, "method": {"params": {"iterations": 5000}}},
            "index": index, "metrics": metrics}


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
    assert "| sr | 2 | 30.00 | 25.00 | 100 | 900 | 900 | 1000 | - |" in text  # no checkpoints
    assert "| deblur | 2 | 30.00 | 25.00 | 1200 | 4000 | 4000 | 4500 | - |" in text


def test_the_pooled_choice_is_the_cheapest_rule_not_distinguishable_from_the_best():
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
    assert "**Budget: 1000 iterations**" in text and "| (50, 300) (pooled) |" in text
    assert "| (100, 1000) | 30.50 |" in text and "| 0% | 1000 |" in text  # stops after the budget
    # one problem: the worst regret is (100, 1000)'s 0, (50, 300)'s 0.08 > tie: (100, 1000)
    assert "**Rule: W = 100, P = 1000** (the smallest worst regret, 0.00 dB" in text
    assert "**Rule: W = 50, P = 300**" in pick_wmv.render(data, [Path("x.jsonl")], 0.9, 500, tie=0.1)


def test_the_rule_with_the_smallest_worst_regret_over_problems_is_chosen():
    # (50, 100) is best on "noisy" by 1 dB and loses 3 dB on "deblur"; (100, 1000) wins deblur by
    # 3 dB and loses 2 dB on noisy; (50, 300) loses 0.5 / 1.5: the smallest worst regret (1.5).
    table = {(50, 100): (30.0, 27.0, 300), (50, 300): (29.5, 28.5, 600), (100, 1000): (28.0, 30.0, 2000)}
    rows = [row(task, i + 10 * k, 800, {r: (v[k] + 0.1 * i, v[2]) for r, v in table.items()})
            for k, task in enumerate(["noisy", "deblur"]) for i in range(4)]
    data = pick_wmv.cases(rows)
    summary = pick_wmv.summarize(data, 5000)
    problems, means, regret = pick_wmv.per_problem(summary)
    assert problems == ["deblur", "noisy"]
    assert regret == pytest.approx({(50, 100): 3.0, (50, 300): 1.5, (100, 1000): 2.0})
    assert pick_wmv.choose_minimax(summary, regret, 0.05)["rule"] == (50, 300)
    # within the tie the cheaper rule wins
    assert pick_wmv.choose_minimax(summary, regret, 0.6)["rule"] == (50, 300)
    assert pick_wmv.choose_minimax(summary, regret, 1.6)["rule"] == (50, 100)
    text = pick_wmv.render(data, [Path("x.jsonl")], 0.9, 500)
    assert "| (50, 300) **chosen** | 28.65 | 29.65 | 1.50 |" in text


def test_only_rules_recorded_in_every_case_compete():
    rows = [row("sr", 0, 10, {(25, 100): (20, 50), (50, 100): (21, 60)}),
            row("sr", 1, 10, {(25, 100): (20, 50)})]
    assert pick_wmv.rules(pick_wmv.cases(rows)) == [(25, 100)]


def test_the_budget_is_the_first_checkpoint_converged_on_the_quantile():
    # last iterate 25 dB everywhere; case i's iterate 999 lags by 0.5, 0.05, 0.0, 0.02 dB and
    # iterate 499 by more: within 0.1 dB at 999 on 3 of 4 cases, at 1999 on all
    lags = {499: [2.0, 1.0, 0.5, 0.3], 999: [0.5, 0.05, 0.0, 0.02], 1999: [0.05, 0.0, -0.1, 0.0]}
    rows = []
    for i in range(4):
        r = row("sr", i, 4999, {(25, 100): (20.0, 50)})  # the peaks say 5000
        r["metrics"].update({f"trace:psnr@{it}": 25.0 - lag[i] for it, lag in lags.items()})
        rows.append(r)
    rows.append(row("old", 0, 4999, {(25, 100): (20.0, 50)}))  # no checkpoints: left out of it
    data = pick_wmv.cases(rows)
    assert pick_wmv.checkpoints(data) == ([499, 999, 1999], [("sr", 0), ("sr", 1), ("sr", 2), ("sr", 3)])
    assert pick_wmv.converged_share(data, pick_wmv.checkpoints(data)[1], 999, 0.1)[0] == 0.75
    assert pick_wmv.converged_budget(data, 0.75, 0.1) == 1000
    assert pick_wmv.converged_budget(data, 0.9, 0.1) == 2000
    assert pick_wmv.converged_budget(data, 0.9, 0.01) is None  # 0.02 and 0.05 lags remain
    text = pick_wmv.render(data, [Path("x.jsonl")], 0.9, 500)
    assert "**Budget: 2000 iterations** (the first checkpoint" in text and ": 5000)." in text
    assert "(4 of 5 cases have the checkpoint columns)" in text and "| 999 | 75% | +0.14 |" in text
    assert "| sr | 4 | 30.00 | 25.00 | 4999 | 4999 | 4999 | 5000 | 2000 |" in text  # per problem
    assert "| old | 1 | 30.00 | 25.00 | 4999 | 4999 | 4999 | 5000 | - |" in text
    strict = pick_wmv.render(data, [Path("x")], 0.9, 500, 0.01)
    assert "**Budget: 5000 iterations** (the 90% quantile" in strict


def test_a_rule_that_ran_the_whole_run_did_not_stop():
    # budget 5000 = the run's length: iterations_run 5000 means "never stopped", not "within"
    rows = [row("sr", i, 4999, {(25, 100): (20.0, 5000), (50, 100): (20.0, 300)}) for i in range(3)]
    text = pick_wmv.render(pick_wmv.cases(rows), [Path("x.jsonl")], 0.9, 500)
    assert "**Budget: 5000 iterations**" in text
    assert "| (25, 100) | 20.00 | +0.00 [+0.00, +0.00] | 10.00 | 0% | 5000 |" in text
    assert "| (50, 100) (pooled) | 20.00 | +0.00 [+0.00, +0.00] | 10.00 | 100% | 300 |" in text


def test_rules_are_judged_under_the_budget_where_that_is_known_exactly():
    rules_ = {(25, 100): (20.0, 300), (50, 300): (22.0, 5000)}  # (50, 300) never stopped
    a = row("sr", 0, 1500, rules_)
    a["metrics"].update({"trace:wmv_25_100_pick_psnr@1999": 20.0,
                         "trace:wmv_50_300_pick_psnr@1999": 19.0})  # under 2000: worse
    b = row("sr", 1, 1500, rules_)  # no columns: (50, 300)'s pick under 2000 is unknown
    data = pick_wmv.cases([a, b])
    assert pick_wmv.pick_under_budget(data[("sr", 1)], 25, 100, 2000) == 20.0  # stopped: exact
    assert pick_wmv.pick_under_budget(data[("sr", 1)], 50, 300, 2000) is None
    # under a budget equal to the run's length the pick is the long run's, stopped or not
    assert pick_wmv.pick_under_budget(data[("sr", 1)], 50, 300, 5000) == 22.0
    assert pick_wmv.judged_cases(data, 5000) == [("sr", 0), ("sr", 1)]
    assert pick_wmv.judged_cases(data, 2000) == [("sr", 0)]
    summary = pick_wmv.summarize(data, 2000)
    assert [(s["rule"], s["psnr"].center, s["cases"]) for s in summary] == \
        [((25, 100), 20.0, 1), ((50, 300), 19.0, 1)]
    # without exact values anywhere, the long run's picks (22 dB for (50, 300)) are shown
    full = pick_wmv.summarize(pick_wmv.cases([b]), 2000)
    assert not full[0]["under_budget"] and full[1]["psnr"].center == 22.0
