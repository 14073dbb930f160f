"""Where ES-WMV stopped DMPlug, image by image, and what the stop cost against the oracle peak.

    python benchmarks/tools/dmplug_stops.py benchmarks/dmplug_linear.part*.jsonl \
        -o benchmarks/dmplug_linear_stops.md

Reads the rows of a restore run whose DMPlug cells record ``oracle`` (the best PSNR over the
iterates run, chosen with the truth), ``psnr`` (of the ES-WMV pick) and ``trace:iterations_run``.
Per cell: N, how many runs ES-WMV stopped before the budget (the method's ``iterations``), the
iterations run (median, range), the gap oracle - psnr as a paired mean with its 95% Student-t
interval (the same images on both sides, so this is the interval of the per-image gap), and the
images with the largest gaps with where each stopped. Rows without those metrics (or with nan in
them: the other methods of a table) are skipped, so whole tables can be passed along.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from diffinv.bench.records import read_records
from diffinv.bench.stats import mean_interval

NEEDED = ("oracle", "psnr", "trace:iterations_run")


def stop_cases(rows: list[dict]) -> dict[tuple[str, str, str], list[tuple[int, int, int, float]]]:
    """{(method, task, prior) labels: [(image, iterations run, budget, oracle - psnr)]}."""
    out: dict[tuple[str, str, str], list[tuple[int, int, int, float]]] = defaultdict(list)
    for r in rows:
        m = r["metrics"]
        if not all(k in m and not math.isnan(m[k]) for k in NEEDED):
            continue  # another method (its oracle column is nan), or no oracle recorded
        cell = r["cell"]
        budget = int(cell["method"]["params"]["iterations"])
        key = (cell["method"]["label"], cell["task"]["label"], cell["prior"]["label"])
        out[key].append((int(r["index"]), int(m["trace:iterations_run"]), budget, m["oracle"] - m["psnr"]))
    return out


def render(cases: dict[tuple[str, str, str], list[tuple[int, int, int, float]]], command: str,
           worst: int = 3) -> str:
    lines = [
        "# ES-WMV stops and the oracle gap, image by image", "",
        f"- Made by: `{command}`",
        "- stopped: runs ES-WMV ended before the budget; iterations run: median [min, max]",
        "- gap: oracle - psnr per image (oracle: best PSNR up to the stop, chosen with the truth; "
        "psnr: the ES-WMV pick), mean ± half-width of its 95% Student-t interval",
        f"- largest gaps: image (iterations run) gap, the {worst} largest", "",
        "| method | task | prior | N | stopped | budget | iterations run | gap (dB) | largest gaps |",
        "|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for (method, task, prior), items in sorted(cases.items()):
        items = sorted(items)
        runs = [it for _, it, _, _ in items]
        budgets = {b for _, _, b, _ in items}
        stopped = sum(it < b for _, it, b, _ in items)
        s = mean_interval([g for *_, g in items])
        gap = f"{s.center:.2f} ± {(s.high - s.low) / 2:.2f}" if len(items) > 1 else f"{s.center:.2f}"
        top = sorted(items, key=lambda t: -t[3])[:worst]
        largest = ", ".join(f"{i} ({it}) {g:.2f}" for i, it, _, g in top)
        budget = "/".join(str(b) for b in sorted(budgets))
        lines.append(f"| {method} | {task} | {prior} | {len(items)} | {stopped} | {budget} | "
                     f"{statistics.median(runs):.0f} [{min(runs)}, {max(runs)}] | {gap} | {largest} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", type=Path, nargs="+", help="the run's rows (several files: its shards)")
    ap.add_argument("--worst", type=int, default=3, help="how many of the largest gaps to list")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    rows = [r for path in args.jsonl for r in read_records(path)[0]]
    cases = stop_cases(rows)
    if not cases:
        raise SystemExit(f"no row has all of {list(NEEDED)}: no DMPlug cell with an oracle column")
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/tools/dmplug_stops.py", *sys.argv[1:]])
    text = render(cases, command, args.worst)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
