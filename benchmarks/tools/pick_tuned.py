"""Per-task picks of a tuning run: for each solver (registry name) and task, the hyper-parameter
value with the best mean PSNR over the validation images, and how far each other value is from it.

    python benchmarks/tools/pick_tuned.py benchmarks/tune_linear*.jsonl -o benchmarks/tune_linear_picks.md

(give every results file of the run: shards write NAME.partIofN.jsonl beside NAME.jsonl)

All values of one solver see the same images and the same measurements (the bench draws y from a
stream seeded by (seed, image)), so "best minus other" is a paired, per-image difference; its
95% Student-t interval says whether the pick is distinguishable from that value on these images.
A tie on mean PSNR (within 0.05 dB) goes to the better mean SSIM. Only values whose cell has all
its images (the largest N of that solver and task) compete; incomplete ones are listed as such.

With -o naming an existing file, what people wrote there is kept: everything from the file's first
"## " heading to its end (the tool writes no such heading) follows the regenerated table.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from diffinv.bench.records import read_records
from diffinv.bench.stats import mean_interval

TIE_DB = 0.05


def per_image(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict[int, dict[str, float]]]]:
    """{(solver name, task label): {method label: {image index: metrics}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        method, task = r["cell"]["method"], r["cell"]["task"]
        out[(method["name"], task["label"])][method["label"]][r["index"]] = r["metrics"]
    return out


def _mean(values: dict[int, dict[str, float]], metric: str) -> float:
    xs = [m[metric] for m in values.values() if metric in m and math.isfinite(m[metric])]
    return math.fsum(xs) / len(xs) if xs else math.nan


def pick(candidates: dict[str, dict[int, dict[str, float]]]) -> tuple[str | None, list[str]]:
    """The best complete label (mean PSNR, SSIM breaking ties within TIE_DB) and the incomplete."""
    n = max(len(v) for v in candidates.values())
    complete = {k: v for k, v in candidates.items() if len(v) == n}
    incomplete = sorted(set(candidates) - set(complete))
    if not complete:
        return None, incomplete
    top = max(_mean(v, "psnr") for v in complete.values())
    tied = [k for k, v in complete.items() if _mean(v, "psnr") >= top - TIE_DB]
    best = max(tied, key=lambda k: (_mean(complete[k], "ssim"), _mean(complete[k], "psnr")))
    return best, incomplete


def paired_gap(best: dict[int, dict[str, float]], other: dict[int, dict[str, float]]) -> str:
    diffs = [best[i]["psnr"] - other[i]["psnr"] for i in sorted(set(best) & set(other))]
    s = mean_interval(diffs)
    if s.n < 2:
        return f"{s.center:+.2f}"
    mark = "" if s.low > 0 else " (not distinguishable)"
    return f"{s.center:+.2f} [{s.low:+.2f}, {s.high:+.2f}]{mark}"


def render(groups: dict, sources: list[Path]) -> str:
    names = " ".join(str(p) for p in sources)
    lines = [f"# Tuning picks from `{names}`", "",
             "Per solver and task: the value with the best mean PSNR over the validation images "
             f"(SSIM breaks ties within {TIE_DB} dB), then each other value's paired PSNR gap "
             "(pick minus value, mean [95% interval] over the same images).",
             f"Made by `python benchmarks/tools/pick_tuned.py {names}`.", "",
             "| solver | task | pick | PSNR | SSIM | N | gap to the others (dB) |",
             "|---|---|---|--:|--:|--:|---|"]
    for (solver, task), cands in sorted(groups.items()):
        best, incomplete = pick(cands)
        if best is None:
            continue
        v = cands[best]
        gaps = [f"{k}: {paired_gap(v, cands[k])}" for k in sorted(cands) if k != best and k not in incomplete]
        gaps += [f"{k}: incomplete ({len(cands[k])} images)" for k in incomplete]
        lines.append(f"| {solver} | {task} | {best} | {_mean(v, 'psnr'):.2f} | "
                     f"{_mean(v, 'ssim'):.3f} | {len(v)} | {'; '.join(gaps)} |")
    return "\n".join(lines) + "\n"


def hand_written_tail(previous: str) -> str:
    """The part of an earlier picks file that people wrote: from its first ``## `` heading on."""
    lines = previous.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("## "):
            return "".join(lines[i:])
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", type=Path, nargs="+", help="every results file of the run")
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help="the picks file; an existing one keeps its sections from the first '## ' on")
    args = ap.parse_args()
    rows = [r for path in args.jsonl for r in read_records(path)[0]]
    if not rows:
        raise SystemExit(f"no rows in {' '.join(map(str, args.jsonl))}")
    text = render(per_image(rows), args.jsonl)
    if args.output:
        tail = hand_written_tail(args.output.read_text()) if args.output.exists() else ""
        args.output.write_text(text + ("\n" + tail if tail else ""))
    print(text)


if __name__ == "__main__":
    main()
