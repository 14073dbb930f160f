"""Do two sets of rows of the same units agree? Rows of one run computed twice (say on a CPU and
on a GPU, or before and after a change) are matched by their unit key (the same cell, image,
measurement and solver seed), and each metric's per-unit difference is summarised per cell.

    python benchmarks/tools/compare_runs.py benchmarks/dmplug_noise_cpu_rows.jsonl \
        benchmarks/dmplug_noise.jsonl --metric psnr --metric oracle \
        --metric trace:iterations_run -o benchmarks/dmplug_noise_devices.md

The first path is A (one file), the others B (one or more: a sharded run's parts). Units present
on one side only are counted, not compared. Per cell and metric: N matched, median |b - a|,
max |b - a| and the image where the maximum occurs; the header names the machines and devices
each side's rows came from.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from diffinv.bench.machine import describe_machine
from diffinv.bench.records import read_records


def load(paths: list[Path]) -> dict[str, dict]:
    """{unit key: row} over ``paths``; a key seen twice is an error (a run is one row per unit)."""
    out: dict[str, dict] = {}
    for p in paths:
        for r in read_records(p)[0]:
            if r["key"] in out:
                raise SystemExit(f"{p}: unit {r['key']} appears twice")
            out[r["key"]] = r
    return out


def cell_label(r: dict) -> str:
    return ", ".join(v["label"] for v in r["cell"].values())


def compare(a: dict[str, dict], b: dict[str, dict], metrics: list[str]
            ) -> dict[str, dict[str, list[tuple[float, int]]]]:
    """{cell label: {metric: [(|b - a|, image index)]}} over the units in both (finite values)."""
    out: dict[str, dict[str, list[tuple[float, int]]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(a.keys() & b.keys()):
        ra, rb = a[key], b[key]
        for m in metrics:
            va, vb = ra["metrics"].get(m), rb["metrics"].get(m)
            if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
                continue
            out[cell_label(ra)][m].append((abs(vb - va), int(ra["index"])))
    return out


def sources(rows: dict[str, dict]) -> str:
    seen = dict.fromkeys(f"{r.get('device', '?')} on {describe_machine(r.get('machine', {}))}"
                         for r in rows.values())
    return "; ".join(seen)


def render(a: dict[str, dict], b: dict[str, dict], diffs: dict, metrics: list[str], command: str) -> str:
    lines = [
        "# Agreement of two computations of the same units", "",
        f"- Made by: `{command}`",
        f"- A: {len(a)} rows ({sources(a)})",
        f"- B: {len(b)} rows ({sources(b)})",
        f"- matched units: {len(a.keys() & b.keys())}; A only: {len(a.keys() - b.keys())}; "
        f"B only: {len(b.keys() - a.keys())}",
        "- per metric: median |B - A| and max |B - A| (image) over the matched units", "",
        "| cell | N | " + " | ".join(f"{m}: median abs | {m}: max abs (image)" for m in metrics) + " |",
        "|---|--:|" + "--:|--:|" * len(metrics),
    ]
    for cell in sorted(diffs):
        per = diffs[cell]
        n = max(len(v) for v in per.values())
        cols = []
        for m in metrics:
            d = per.get(m, [])
            if not d:
                cols += ["", ""]
                continue
            worst = max(d)
            cols += [f"{statistics.median(x for x, _ in d):.4g}", f"{worst[0]:.4g} ({worst[1]})"]
        lines.append(f"| {cell} | {n} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="rows A (one file)")
    ap.add_argument("b", type=Path, nargs="+", help="rows B (one or more files)")
    ap.add_argument("--metric", action="append", required=True, help="metric to compare (repeat)")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    a, b = load([args.a]), load(args.b)
    diffs = compare(a, b, args.metric)
    if not diffs:
        raise SystemExit("no unit is in both A and B with a finite value of the metrics asked for")
    command = " ".join(shlex.quote(x) for x in ["python", "benchmarks/tools/compare_runs.py", *sys.argv[1:]])
    text = render(a, b, diffs, args.metric, command)
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
