"""Paired per-image differences between two rows of a restore run (same images, same
measurements, same solver seeds), as a Markdown table with the 95% Student-t interval.

    python benchmarks/tools/paired_difference.py benchmarks/precision.jsonl \
        --axis prior --a "fashion32 fp32" --b "fashion32 bf16" -o benchmarks/precision_paired.md
    python benchmarks/tools/paired_difference.py benchmarks/linear.part*.jsonl \
        --axis method --a DPS --b MCG --metric psnr -o benchmarks/linear_paired_mcg_dps.md

Several files (a sharded run's parts) are read as one run. ``--a`` may be repeated: one table of
``b`` minus each reference (a method against every other one). ``--a best``: in each cell, the
other label with the highest mean ``--best-by`` metric (default psnr) among those with at least
as many images as ``b`` (``--exclude`` keeps references such as a true-operator row out):

    python benchmarks/tools/paired_difference.py benchmarks/linear*.jsonl --axis method \
        --a DPS --a best --b DiffPIR --metric psnr -o benchmarks/linear_paired_diffpir.md

``--b`` may be repeated instead (with one ``--a``): one table of each ``b`` minus the same
reference, e.g. every method minus the do-nothing row (the measurement as the estimate):

    python benchmarks/tools/paired_difference.py benchmarks/blind_linear.part*.jsonl --axis method \
        --a 'measurement as the estimate (y)' --b BlindDPS --b CL-DPS -o benchmarks/blind_linear_paired_y.md

For every (other axes) cell present under both labels, the table gives N, mean(b - a) with its
95% interval, and max |b - a|, per metric. Rows are matched by image index, so the interval is
that of the paired difference (far tighter than comparing two means with their own intervals).
Where a cell was re-run under new settings with the same labels, the newest row of each image is
used (``latest_rows``). The statistics are :mod:`diffinv.bench.paired`'s, which the docs'
``{{ paired ... }}`` figures use too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from diffinv.bench.paired import (  # noqa: F401  (re-exported: the tool's functions live there)
    best_other,
    cell_labels,
    format_max_abs,
    format_mean_diff,
    latest_rows,
    paired,
    paired_with_best,
    psnr_verdict,
)
from diffinv.bench.records import read_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", type=Path, nargs="+", help="the run's rows (several files: its shards)")
    ap.add_argument("--axis", default="prior",
                    help="the axis whose labels --a and --b name; AXIS1+AXIS2 (method+prior) "
                         "compares rows that differ in both, labels 'METHOD @ PRIOR'")
    ap.add_argument("--a", required=True, action="append",
                    help="label of the reference row (repeatable: b minus each)")
    ap.add_argument("--b", required=True, action="append",
                    help="label of the compared row (repeatable with one --a: each b minus a)")
    ap.add_argument("--metric", action="append", default=None,
                    help="only this metric (repeatable); default: every metric both rows have")
    ap.add_argument("--best-by", default="psnr", help="metric that picks the best (--a best)")
    ap.add_argument("--exclude", action="append", default=[],
                    help="label never taken as the best (repeatable)")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    rows = latest_rows([r for path in args.jsonl for r in read_records(path)[0]])
    best_of: dict[tuple, str] = {}
    by_ref = {}
    each_b = len(args.b) > 1
    if each_b and (len(args.a) > 1 or "best" in args.a):
        raise SystemExit("several --b need exactly one --a (not 'best'): each b minus that a")
    if each_b:  # rows keyed by the compared label: each b minus the one reference
        by_ref = {b: paired(rows, args.axis, args.a[0], b) for b in args.b}
        empty = [b for b, d in by_ref.items() if not d]
        if empty:
            raise SystemExit(f"no image is present under both {args.a[0]!r} and {empty}")
    b_label = args.b[0]
    for a in ([] if each_b else args.a):
        if a == "best":
            by_ref[a], best_of = paired_with_best(rows, args.axis, b_label, args.best_by,
                                                  args.exclude)
        else:
            by_ref[a] = paired(rows, args.axis, a, b_label)
    empty = [a for a, d in by_ref.items() if not d]
    if empty:
        raise SystemExit(f"no image is present under both {empty} and {b_label!r}")
    metrics = sorted({m for diffs in by_ref.values() for d in diffs.values() for m in d})
    if args.metric:
        unknown = sorted(set(args.metric) - set(metrics))
        if unknown:
            raise SystemExit(f"no paired values of {unknown}; the rows have {metrics}")
        metrics = [m for m in metrics if m in args.metric]
    sources = " ".join(f"`{p}`" for p in args.jsonl)
    argv = ["python", "benchmarks/tools/paired_difference.py", *sys.argv[1:]]
    command = " ".join(shlex.quote(a) for a in argv)
    several = len(args.a) > 1 or each_b
    if "best" in args.a:
        title_note = f" (best: the other row with the highest mean {args.best_by} in the cell)"
    else:
        title_note = ""
    if each_b:
        title = f"each of {', '.join(args.b)} minus {args.a[0]}"
    elif several:
        title = f"{b_label} minus each of {', '.join(args.a)}"
    else:
        title = f"{b_label} minus {args.a[0]}"
    verdict = each_b and "psnr" in metrics  # each b above, below or level with the reference
    lines = [f"# Paired differences: {title}{title_note}", "",
             f"- Made by: `{command}`",
             f"- Source: {sources} (rows matched by cell and image index)",
             "- Cells: mean of the per-image difference ± half-width of its 95% Student-t "
             "interval; max |diff| over the images", "",
             "| " + (f"{args.axis} | " if each_b else "minus | " if several else "") + "cell | N | "
             + " | ".join(f"{m}: mean diff | {m}: max abs" for m in metrics)
             + (f" | psnr vs {args.a[0]}" if verdict else "") + " |",
             "|" + ("---|" if several else "") + "---|--:|" + "--:|--:|" * len(metrics)
             + ("---|" if verdict else "")]
    for a, diffs in by_ref.items():
        for rest, d in sorted(diffs.items()):
            n = max(len(v) for v in d.values())
            cells = []
            for m in metrics:
                v = d.get(m, [])
                if not v:
                    cells += ["", ""]
                    continue
                cells += [format_mean_diff(v), format_max_abs(v)]
            if verdict:
                cells.append(psnr_verdict(d.get("psnr", [])))
            name = ", ".join(label for _, label in rest)
            ref = f"best: {best_of[rest]}" if a == "best" else a
            lines.append("| " + (f"{ref} | " if several else "") + f"{name} | {n} | "
                         + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
