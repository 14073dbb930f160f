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
used (``latest_rows``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from diffinv.bench.records import read_records
from diffinv.bench.stats import mean_interval


def cell_labels(row: dict, without: str | None = None) -> tuple[tuple[str, str], ...]:
    """The row's (axis, label) pairs, sorted, leaving out axis ``without``."""
    return tuple(sorted((k, v["label"]) for k, v in row["cell"].items() if k != without))


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (cell labels, image index): the most recently finished. A cell re-run under new
    settings with the same labels (a retuned method, say) leaves its earlier rows in the files;
    only the newest of each image counts."""
    newest: dict[tuple, dict] = {}
    for r in rows:
        key = (cell_labels(r), r["index"])
        if key not in newest or str(r.get("finished", "")) >= str(newest[key].get("finished", "")):
            newest[key] = r
    return list(newest.values())


def paired(rows: list[dict], axis: str, a: str, b: str) -> dict[tuple, dict[str, list[float]]]:
    """{(other axes' labels): {metric: [b - a per matched image]}}."""
    side: dict[str, dict[tuple, dict]] = {a: {}, b: {}}
    for r in rows:
        label = r["cell"][axis]["label"]
        if label not in side:
            continue
        rest = cell_labels(r, axis)
        side[label][(rest, r["index"])] = r["metrics"]
    out: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, ma in side[a].items():
        mb = side[b].get(key)
        if mb is None:
            continue
        for metric, va in ma.items():
            if metric in mb:
                out[key[0]][metric].append(mb[metric] - va)
    return out


def best_other(rows: list[dict], axis: str, b: str, metric: str,
               exclude: Sequence[str] = ()) -> dict[tuple, str]:
    """Per cell (other axes' labels): the label other than ``b`` with the highest mean ``metric``
    among those with at least as many images as ``b`` in that cell."""
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        rest = cell_labels(r, axis)
        if metric in r["metrics"]:
            values[rest][r["cell"][axis]["label"]].append(r["metrics"][metric])
    out = {}
    for rest, by_label in values.items():
        n_b = len(by_label.get(b, []))
        means = {lab: sum(v) / len(v) for lab, v in by_label.items()
                 if lab != b and lab not in exclude and n_b and len(v) >= n_b}
        if means:
            out[rest] = max(means, key=lambda lab: means[lab])
    return out


def paired_with_best(rows: list[dict], axis: str, b: str, metric: str,
                     exclude: Sequence[str] = ()) -> tuple[dict, dict[tuple, str]]:
    """``paired`` against each cell's best other label (see :func:`best_other`)."""
    best = best_other(rows, axis, b, metric, exclude)
    out = {}
    for rest, label in best.items():
        d = paired(rows, axis, label, b)
        if rest in d:
            out[rest] = d[rest]
    return out, best


def psnr_verdict(diffs: Sequence[float]) -> str:
    """``above`` / ``below`` when the 95% interval of the paired PSNR difference excludes 0,
    else ``level``."""
    if len(diffs) < 2:
        return ""
    st = mean_interval(list(diffs))
    return "above" if st.low > 0 else "below" if st.high < 0 else "level"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", type=Path, nargs="+", help="the run's rows (several files: its shards)")
    ap.add_argument("--axis", default="prior")
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
                st = mean_interval(v)
                cells += [f"{st.center:+.4f} ± {(st.high - st.low) / 2:.4f}" if len(v) > 1
                          else f"{st.center:+.4f}", f"{max(abs(x) for x in v):.4g}"]
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
