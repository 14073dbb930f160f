"""Is a blind method's kernel estimate better than assuming no blur at all?

For each kernel family of a restore task file (default ``benchmarks/tasks/blind_kernels.toml``)
this tool rebuilds the hidden kernels of test images 0..N-1 exactly as the bench made them (the
same ``diffinv.physics.measure`` call, dataset, seed and image indices; evaluation only), scores
the delta kernel (the "no blur" hypothesis that the do-nothing row y makes) with the table's kernel
metric, ``kernel_mse`` (MSE over the kernel's entries after centring both kernels), and sets it
beside every row of the run that estimated a kernel. Per cell it reports

* the method's mean kernel MSE and the delta's on the same images,
* the paired difference log10(MSE_method / MSE_delta) with its 95% Student-t interval (a ratio,
  since kernel errors span orders of magnitude across families; > 0: the estimate is farther from
  the true kernel than a delta),
* the share of images whose estimate is worse than the delta, and
* the method's PSNR minus y on the same images (paired), so a row below y can be read against
  its kernel estimate.

A kernel estimate worse than a delta explains a restoration below y: deconvolving with a kernel
wider than the true one sharpens past the truth (ringing), while y itself is the delta's answer.

    python benchmarks/tools/blind_kernel_vs_delta.py \
        benchmarks/blind_kernels.jsonl benchmarks/blind_kernels.part*.jsonl \
        benchmarks/blind_linear.jsonl benchmarks/blind_linear.part*.jsonl \
        -o benchmarks/blind_kernels_vs_delta.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import torch

from diffinv.bench.paired import latest_rows
from diffinv.bench.records import read_records
from diffinv.bench.spec import Entry, read_task_file
from diffinv.bench.stats import mean_interval
from diffinv.data.datasets import load_split
from diffinv.metrics.kernels import kernel_mse
from diffinv.physics import make_operator, measure
from diffinv.solvers._blind import delta_kernel

Y_LABEL = "measurement as the estimate (y)"


def true_kernels(operator: str, params: dict, noise: str, dataset: str, seed: int,
                 n: int) -> torch.Tensor:
    """The hidden (n, k, k) kernels of images 0..n-1, made as the restore kind makes them."""
    name, split = dataset.split(":")
    x = load_split(name, split).images[:n]
    op = make_operator(operator, **params)
    return measure(x, op, noise, seed, list(range(n)), source=dataset).true_kernels()


def fmt(values: list[float], digits: int = 2) -> str:
    """Mean ± 95% Student-t half-width."""
    s = mean_interval(values)
    return f"{s.center:+.{digits}f} ± {(s.high - s.low) / 2:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jsonl", nargs="+", type=Path, help="the run's row files (and reused runs')")
    ap.add_argument("--task-file", type=Path, default=Path("benchmarks/tasks/blind_kernels.toml"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    task = read_task_file(args.task_file)
    run = task.run
    dataset, seed, n = run["dataset"], int(run.get("seed", 0)), int(run["n_images"])
    rows = latest_rows([r for f in args.jsonl for r in read_records(f)[0]])

    by_cell: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        by_cell[(r["cell"]["task"]["label"], r["cell"]["method"]["label"])][r["index"]] = r["metrics"]

    lines = [
        "# Blind kernel estimates against the delta kernel (no blur), per family",
        "",
        "- Made by: `python benchmarks/tools/blind_kernel_vs_delta.py "
        + " ".join(shlex.quote(str(a)) for a in (argv if argv is not None else sys.argv[1:])) + "`",
        f"- Task file: `{args.task_file}`; {dataset} images 0..{n - 1}, seed {seed} (the "
        "hidden kernels rebuilt as the bench made them; evaluation only)",
        "- kernel MSE: `diffinv.metrics.kernels.kernel_mse` (both kernels centred; the table's "
        "kernel-mse); delta: the kernel of 'no blur', the do-nothing row's hypothesis",
        "- log10 ratio: paired mean of log10(MSE_method / MSE_delta) ± 95% Student-t half-width "
        "(> 0: the estimate is farther from the true kernel than a delta); worse: share of images "
        "with MSE_method > MSE_delta; PSNR - y: paired, same images; where worse: its mean over "
        "the images whose estimate is worse than a delta (their number)",
        "",
        "| family | method | N | kernel MSE | delta's MSE | log10 ratio | worse than delta | "
        "PSNR - y (dB) | PSNR - y where worse (n) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    tasks = [Entry.parse("task", raw) for raw in task.grid["tasks"]]
    methods = [Entry.parse("method", raw) for raw in task.grid["methods"]]
    for t in tasks:
        op_params = dict(t.params)
        operator, noise = op_params.pop("operator", t.name), op_params.pop("noise")
        truth = true_kernels(operator, op_params, noise, dataset, seed, n)
        size = truth.shape[-1]
        delta = kernel_mse(delta_kernel(n, size), truth).tolist()
        y = by_cell.get((t.label, Y_LABEL), {})
        for m in methods:
            got = by_cell.get((t.label, m.label), {})
            idx = [i for i in range(n) if i in got and not math.isnan(got[i].get("kernel-mse",
                                                                                   math.nan))]
            if not idx:
                continue
            est = [got[i]["kernel-mse"] for i in idx]
            ratio = [math.log10(got[i]["kernel-mse"] / delta[i]) for i in idx]
            worse = sum(e > delta[i] for e, i in zip(est, idx, strict=True)) / len(idx)
            gain = [got[i]["psnr"] - y[i]["psnr"] for i in idx if i in y]
            g = fmt(gain, 1) if len(gain) > 1 else "–"
            bad = [got[i]["psnr"] - y[i]["psnr"] for i in idx
                   if i in y and got[i]["kernel-mse"] > delta[i]]
            g_bad = f"{sum(bad) / len(bad):+.1f} ({len(bad)})" if bad else "–"
            lines.append(
                f"| {t.label} | {m.label} | {len(idx)} | {sum(est) / len(est):.2e} | "
                f"{sum(delta[i] for i in idx) / len(idx):.2e} | {fmt(ratio)} | "
                f"{worse:.0%} | {g} | {g_bad} |")
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
