"""DMPlug's fixed iteration budget and ES-WMV (W, P) from the convergence study (issue 5).

    python benchmarks/tools/pick_wmv.py benchmarks/dmplug_convergence*.jsonl \
        -o benchmarks/dmplug_convergence_picks.md

(give every results file of the run: shards write NAME.partIofN.jsonl beside NAME.jsonl)

The rows come from ``benchmarks/tasks/dmplug_convergence.toml``: one long run per validation image
and problem, with no stopping, whose trace holds where the PSNR peaked
(``trace:oracle_iteration``) and, for each candidate rule (W, P), the PSNR of the iterate that
ES-WMV would have returned and the iteration at which it would have stopped.

* **Budget** B: where the PSNR has converged. With the ``trace:psnr@I`` columns (the PSNR of
  iterate I of the long run), B = I + 1 for the first checkpoint I at which the iterate is within
  ``--tolerance`` (0.1 dB) of the last iterate's PSNR, or above it, on at least ``--quantile``
  (0.9) of the cases that have the columns: running on past B changes the iterate by less than the
  tolerance there. Beside it, the peak budget: the smallest multiple of ``--round`` (500)
  iterations at or above the ``--quantile`` (nearest rank) of the peak iterations; where the PSNR
  curve ends in a plateau the peak's position is arbitrary within it, so this one only decides
  when no checkpoint columns were recorded. Both need the truth; they are used here, on
  validation images only, to size the budget, never to pick a test result.
* **Rule**, judged under the budget B: what a rule returns with B iterations is known exactly from
  its ``trace:wmv_W_P_pick_psnr@{B-1}`` column, or from its long-run pick when it stopped within B;
  the rules are compared on the cases where this holds for all of them (where no case does, on
  their long-run picks, as the table says). Per problem, a rule's *regret* is the best rule's mean
  pick PSNR on that problem minus its own; the chosen rule has the smallest worst regret over the
  problems (within ``--tie`` = 0.05 dB of it: the one that runs the fewest iterations, mean of
  min(stop, B)): one (W, P) serves every problem, and must not wreck any of them.
  The pooled table beside it gives each rule's mean over all cases, its paired difference to the
  best pooled mean, the share of cases where it stopped within B and its iterations. (Until
  session 8 the rule was the cheapest one whose pooled paired difference to the best had a 95%
  interval containing 0; on the four problems it chose (50, 100), 2.8 dB below the best rule on
  nonlinear deblurring: the problems differ more than the images within one, and a pooled interval
  is too wide to see that. The pooled choice is still shown, marked "pooled".)
"""

from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from pathlib import Path

from diffinv.bench.records import read_records
from diffinv.bench.stats import mean_interval

RULE = re.compile(r"^trace:wmv_(\d+)_(\d+)_psnr$")


RUN_LENGTH = "run:iterations"


def cases(rows: list[dict]) -> dict[tuple[str, int], dict[str, float]]:
    """{(problem label, image index): metrics, plus the long run's length under "run:iterations"
    (inf if the row does not say)}; a later row of the same case replaces an earlier."""
    def length(r: dict) -> float:
        return float(r["cell"].get("method", {}).get("params", {}).get("iterations", math.inf))

    return {(r["cell"]["task"]["label"], int(r["index"])): {**r["metrics"], RUN_LENGTH: length(r)}
            for r in rows}


def rules(data: dict[tuple[str, int], dict[str, float]]) -> list[tuple[int, int]]:
    """The (W, P) candidates recorded in every case, sorted."""
    sets = [{(int(m[1]), int(m[2])) for k in metrics if (m := RULE.match(k))} for metrics in data.values()]
    return sorted(set.intersection(*sets)) if sets else []


def nearest_rank(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def budget(data: dict[tuple[str, int], dict[str, float]], quantile: float, step: int) -> int:
    peaks = [m["trace:oracle_iteration"] for m in data.values()]
    return max(step, step * math.ceil((nearest_rank(peaks, quantile) + 1) / step))


CHECKPOINT = re.compile(r"^trace:psnr@(\d+)$")


def checkpoints(data: dict[tuple[str, int], dict[str, float]]) -> tuple[list[int], list[tuple[str, int]]]:
    """(the iterations I with a finite ``trace:psnr@I`` in every case that has any, those cases)."""
    have = {k: {int(m[1]) for c, v in met.items() if (m := CHECKPOINT.match(c)) and math.isfinite(v)}
            for k, met in data.items()}
    have = {k: s for k, s in have.items() if s}
    its = sorted(set.intersection(*have.values())) if have else []
    return its, sorted(have)


def converged_share(data: dict[tuple[str, int], dict[str, float]], cases_: list[tuple[str, int]],
                    iteration: int, tolerance: float) -> tuple[float, float]:
    """(share of the cases whose iterate ``iteration`` is within ``tolerance`` dB of the last
    iterate's PSNR or above it, mean of last - psnr@iteration)."""
    gaps = [data[k]["psnr"] - data[k][f"trace:psnr@{iteration}"] for k in cases_]
    return sum(g <= tolerance for g in gaps) / len(gaps), math.fsum(gaps) / len(gaps)


def converged_budget(data: dict[tuple[str, int], dict[str, float]], quantile: float,
                     tolerance: float) -> int | None:
    """I + 1 for the first checkpoint I converged on ``quantile`` of the cases (None: none)."""
    its, cases_ = checkpoints(data)
    for it in its:
        if converged_share(data, cases_, it, tolerance)[0] >= quantile:
            return it + 1
    return None


def pick_under_budget(metrics: dict[str, float], w: int, p: int, b: int) -> float | None:
    """The PSNR of what rule (W, P) returns under a budget of ``b`` iterations, when the row
    tells it exactly: its ``pick_psnr@{b-1}`` column, or its pick in the long run if it stopped
    within ``b`` or ``b`` is the long run's length (a rule that never stopped returns its
    minimum-VAR iterate at the end of the budget); None otherwise."""
    at = metrics.get(f"trace:wmv_{w}_{p}_pick_psnr@{b - 1}")
    if at is not None and math.isfinite(at):
        return at
    ran = metrics[f"trace:wmv_{w}_{p}_iterations_run"]
    if b == metrics[RUN_LENGTH] or (ran < metrics[RUN_LENGTH] and ran <= b):
        return metrics[f"trace:wmv_{w}_{p}_psnr"]
    return None


def judged_cases(data: dict[tuple[str, int], dict[str, float]], b: int) -> list[tuple[str, int]]:
    """The cases where every rule's pick under budget ``b`` is known exactly."""
    return [k for k in sorted(data)
            if all(pick_under_budget(data[k], w, p, b) is not None for w, p in rules(data))]


def summarize(data: dict[tuple[str, int], dict[str, float]], b: int) -> list[dict]:
    """Per rule: mean PSNR of its pick under budget b (over :func:`judged_cases`; over every case
    with the long run's picks when none is judged), stop share within b, mean iterations run
    (capped at b), all over the same cases."""
    keys = judged_cases(data, b)
    under = bool(keys)
    keys = keys or sorted(data)
    out = []
    for w, p in rules(data):
        picks = [pick_under_budget(data[k], w, p, b) if under else data[k][f"trace:wmv_{w}_{p}_psnr"]
                 for k in keys]
        stops = [data[k][f"trace:wmv_{w}_{p}_iterations_run"] for k in keys]
        # a rule that never stopped ran the whole long run
        stopped = [s < data[k][RUN_LENGTH] and s <= b for k, s in zip(keys, stops, strict=True)]
        to_peak = [data[k]["oracle"] - x for k, x in zip(keys, picks, strict=True)]
        out.append({"rule": (w, p), "picks": picks, "psnr": mean_interval(picks),
                    "within": sum(stopped) / len(stops),
                    "iterations": math.fsum(min(s, b) for s in stops) / len(stops),
                    "gap_oracle": mean_interval(to_peak), "keys": keys, "cases": len(keys),
                    "under_budget": under})
    return out


def choose(summary: list[dict]) -> tuple[dict, dict[tuple[int, int], object]]:
    """The pooled choice (the cheapest rule whose paired difference to the best pooled mean has a
    95% interval containing 0) and every rule's paired difference to the best mean."""
    best = max(summary, key=lambda s: s["psnr"].center)
    diffs = {s["rule"]: mean_interval([a - c for a, c in zip(best["picks"], s["picks"], strict=True)])
             for s in summary}
    tied = [s for s in summary if s is best or not diffs[s["rule"]].low > 0]
    return min(tied, key=lambda s: (s["iterations"], -s["psnr"].center)), diffs


def per_problem(summary: list[dict]
                ) -> tuple[list[str], dict[tuple[int, int], dict[str, float]], dict[tuple[int, int], float]]:
    """The problems, each rule's mean pick PSNR per problem (over the cases the summary judged)
    and its worst regret: max over problems of (best rule's mean there - its own)."""
    keys = summary[0]["keys"]
    problems = sorted({task for task, _ in keys})
    means: dict[tuple[int, int], dict[str, float]] = {}
    for s in summary:
        by: dict[str, list[float]] = defaultdict(list)
        for (task, _), x in zip(keys, s["picks"], strict=True):
            by[task].append(x)
        means[s["rule"]] = {t: math.fsum(by[t]) / len(by[t]) for t in problems}
    best = {t: max(m[t] for m in means.values()) for t in problems}
    regret = {r: max(best[t] - m[t] for t in problems) for r, m in means.items()}
    return problems, means, regret


def choose_minimax(summary: list[dict], regret: dict[tuple[int, int], float], tie: float) -> dict:
    """The rule with the smallest worst regret; among those within ``tie`` dB of it, the one
    that runs the fewest iterations."""
    least = min(regret.values())
    close = [s for s in summary if regret[s["rule"]] <= least + tie]
    return min(close, key=lambda s: (s["iterations"], regret[s["rule"]]))


def render(data: dict[tuple[str, int], dict[str, float]], sources: list[Path], quantile: float,
           step: int, tolerance: float = 0.1, tie: float = 0.05) -> str:
    names = " ".join(str(p) for p in sources)
    peak_b = budget(data, quantile, step)
    conv_b = converged_budget(data, quantile, tolerance)
    b = peak_b if conv_b is None else conv_b
    summary = summarize(data, b)
    pooled, diffs = choose(summary)
    problems, means, regret = per_problem(summary)
    chosen = choose_minimax(summary, regret, tie)
    per_task: dict[str, list[dict[str, float]]] = defaultdict(list)
    for (task, _), m in sorted(data.items()):
        per_task[task].append(m)
    lines = [f"# DMPlug budget and ES-WMV rule from `{names}`", "",
             f"Made by `python benchmarks/tools/pick_wmv.py {names}` (rules in its docstring). "
             "Validation images only; the peak (oracle) needs the truth and sizes the budget, it "
             "is never a result.", "",
             "| problem | N | PSNR at the peak | PSNR of the last iterate | peak iteration: median "
             f"| 90% | max | its own peak budget ({quantile:.0%}) | its own converged budget |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for task, ms in per_task.items():
        peaks = [m["trace:oracle_iteration"] for m in ms]
        peak_psnr = mean_interval([m["oracle"] for m in ms]).center
        last_psnr = mean_interval([m["psnr"] for m in ms]).center
        mine = {(task, i): m for i, m in enumerate(ms)}
        own = budget(mine, quantile, step)
        conv = converged_budget(mine, quantile, tolerance)
        lines.append(f"| {task} | {len(ms)} | {peak_psnr:.2f} | {last_psnr:.2f} | "
                     f"{nearest_rank(peaks, 0.5):.0f} | {nearest_rank(peaks, 0.9):.0f} | {max(peaks):.0f} "
                     f"| {own} | {'-' if conv is None else conv} |")
    its, conv_cases = checkpoints(data)
    if its:
        lines += ["", f"Convergence ({len(conv_cases)} of {len(data)} cases have the checkpoint columns): "
                  f"the share whose iterate I is within {tolerance:g} dB of the last iterate's PSNR "
                  "(or above it), and the mean PSNR the last iterate adds.", "",
                  "| iterate I | within the tolerance | last minus iterate I (dB, mean) |",
                  "|--:|--:|--:|"]
        for it in its:
            share, gap = converged_share(data, conv_cases, it, tolerance)
            lines.append(f"| {it} | {share:.0%} | {gap:+.2f} |")
    peak_text = (f"the {quantile:.0%} quantile of the peak iterations over {len(data)} cases, rounded "
                 f"up to a multiple of {step}")
    if conv_b is None:
        lines += ["", f"**Budget: {b} iterations** ({peak_text}; no checkpoint reached the tolerance "
                  "on that share, or none was recorded)."]
    else:
        lines += ["", f"**Budget: {b} iterations** (the first checkpoint within {tolerance:g} dB of the "
                  f"last iterate on {quantile:.0%} of the cases; {peak_text}: {peak_b})."]
    first = summary[0] if summary else {"cases": 0, "under_budget": False}
    judged = (f"Each rule under the budget of {b} iterations, on the {first['cases']} of {len(data)} cases "
              "where what it returns under that budget is known exactly (its pick_psnr column at "
              "the budget, or a stop within it):" if first["under_budget"] else
              f"No case tells every rule's pick under {b} iterations: the rules' picks in the whole "
              f"long run, over all {len(data)} cases (a rule that had not stopped by {b} would "
              "return another iterate):")
    lines += ["", judged, "", "Per problem (mean pick PSNR; worst regret = the largest shortfall to the "
              "best rule on any problem):", "",
              "| rule (W, P) | " + " | ".join(problems) + " | worst regret |",
              "|---|" + "--:|" * (len(problems) + 1)]
    for s in summary:
        mark = " **chosen**" if s is chosen else ""
        lines.append(f"| ({s['rule'][0]}, {s['rule'][1]}){mark} | "
                     + " | ".join(f"{means[s['rule']][t]:.2f}" for t in problems)
                     + f" | {regret[s['rule']]:.2f} |")
    lines += ["", "Pooled over the problems:", "",
              "| rule (W, P) | pick PSNR | best minus this (paired) | peak minus pick "
              "| stops within the budget | iterations run (mean, capped) |",
              "|---|--:|--:|--:|--:|--:|"]
    for s in summary:
        d = diffs[s["rule"]]
        mark = " (pooled)" if s is pooled else ""
        lines.append(f"| ({s['rule'][0]}, {s['rule'][1]}){mark} | {s['psnr'].center:.2f} | "
                     f"{d.center:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {s['gap_oracle'].center:.2f} | "
                     f"{s['within']:.0%} | {s['iterations']:.0f} |")
    w, p = chosen["rule"]
    lines += ["", f"**Rule: W = {w}, P = {p}** (the smallest worst regret, {regret[chosen['rule']]:.2f} dB; "
              f"within {tie:g} dB of it, the fewest iterations)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", type=Path, nargs="+", help="every results file of the run")
    ap.add_argument("-o", "--output", type=Path, default=None)
    ap.add_argument("--quantile", type=float, default=0.9)
    ap.add_argument("--round", type=int, default=500, dest="step")
    ap.add_argument("--tolerance", type=float, default=0.1, help="dB (default 0.1)")
    ap.add_argument("--tie", type=float, default=0.05, help="dB: worst regrets this close tie (default 0.05)")
    args = ap.parse_args()
    data = cases([r for path in args.jsonl for r in read_records(path)[0]])
    if not data:
        raise SystemExit(f"no rows in {' '.join(map(str, args.jsonl))}")
    text = render(data, args.jsonl, args.quantile, args.step, args.tolerance, args.tie)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
