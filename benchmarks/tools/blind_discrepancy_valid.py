"""Choose the discrepancy safeguard's threshold tau on VALIDATION images (issue 42).

For each blind solver and kernel family, this tool restores fashion32 validation images 0..N-1
(sigma 0.02, measurement seed 0, solver seed 1; the tuned32 preset of the family, as the tables
run it), and records per image the PSNR of the estimate and of y, the discrepancy ratio
``r = ||y - k_hat * x_hat|| / (sigma sqrt(m))`` (:func:`diffinv.solvers._discrepancy.discrepancy_ratios`,
the quantity the solver option ``discrepancy = tau`` tests) and the kernel MSE of the estimate and
of a delta against the hidden kernel (evaluation only). Rows go to ``--rows`` (JSONL; a rerun
skips the images it has: resumable). It then writes ``-o`` (Markdown): per solver, the mean
PSNR minus y with the fallback at each tau of the grid (images with r > tau returned as y), per
family and pooled over the families, and the tau with the best pooled mean (ties: the larger
tau, which replaces fewer images). Test images are never read.

    python benchmarks/tools/blind_discrepancy_valid.py --solvers fastem pan-l0 \
        --families blind-airy-blur blind-gaussian-blur-wide blind-motion-blur-wide blind-motion-blur \
        --images 20 --rows benchmarks/blind_discrepancy_valid.jsonl -o benchmarks/blind_discrepancy_valid.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

TAUS = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, math.inf)
SIGMA = 0.02


def restore_rows(solver_name: str, family: str, indices: list[int]) -> list[dict]:
    """Restore validation images ``indices`` of ``family`` with ``solver_name``; one row each."""
    from diffinv import load_prior
    from diffinv.data.datasets import load_split
    from diffinv.metrics.kernels import kernel_mse
    from diffinv.metrics.psnr import psnr
    from diffinv.physics import make_operator, measure
    from diffinv.seeding import image_generators
    from diffinv.solvers import make_solver
    from diffinv.solvers._blind import blind_problem, delta_kernel
    from diffinv.solvers._discrepancy import discrepancy_ratios

    prior = load_prior("fashion32")
    x = load_split("fashion32", "valid").images[indices]
    m = measure(x, make_operator(family), f"gaussian:{SIGMA}", 0, indices,
                source="fashion32:valid")
    solver = make_solver(solver_name, preset="tuned32", operator=family)
    t0 = time.perf_counter()
    res = solver(m.y, m.public(), prior, seed=image_generators(1, indices))
    seconds = (time.perf_counter() - t0) / len(indices)
    k = res.trace["kernel"].to(res.x.dtype)
    ratio = discrepancy_ratios(m.y, res.x, k, blind_problem(solver, m.y, m.public()).blur, SIGMA)
    truth = m.true_kernels()
    k_err = kernel_mse(k, truth).tolist()
    d_err = kernel_mse(delta_kernel(len(indices), k.shape[-1]), truth).tolist()

    p, py = psnr(res.x.clamp(-1, 1), x).tolist(), psnr(m.y.clamp(-1, 1), x).tolist()
    return [{"solver": solver_name, "family": family, "index": i, "psnr": p[j], "psnr_y": py[j],
             "ratio": float(ratio[j]), "kernel_mse": k_err[j], "delta_mse": d_err[j],
             "seconds": seconds} for j, i in enumerate(indices)]


def gain_with_fallback(rows: list[dict], tau: float) -> list[float]:
    """PSNR minus y per image when the images with ratio > tau are returned as y."""
    return [0.0 if r["ratio"] > tau else r["psnr"] - r["psnr_y"] for r in rows]


def report(rows: list[dict], command: str) -> str:
    from diffinv.bench.stats import mean_interval

    def cell(values: list[float]) -> str:
        s = mean_interval(values)
        half = (s.high - s.low) / 2 if len(values) > 1 else math.nan
        return f"{s.center:+.2f} ± {half:.2f}"

    head = " | ".join("off" if math.isinf(t) else f"{t:g}" for t in TAUS)
    out = ["# The discrepancy safeguard's threshold, chosen on validation images (issue 42)", "",
           f"- Made by: `{command}`",
           "- fashion32 VALIDATION images, sigma 0.02, measurement seed 0, solver seed 1, the "
           "tuned32 preset of each family; no test image is read",
           "- r = ||y - k_hat * x_hat|| / (sigma sqrt(m)); with threshold tau the images with "
           "r > tau are returned as y (`discrepancy = tau`, diffinv.solvers._discrepancy)",
           "- Cells: mean PSNR minus y (dB) over the images after the fallback ± 95% Student-t "
           "half-width; `off`: no fallback; replaced: images with r > tau",
           ""]
    for solver in sorted({r["solver"] for r in rows}):
        mine = [r for r in rows if r["solver"] == solver]
        fams = sorted({r["family"] for r in mine})
        out += [f"## {solver}", "", f"| family | N | {head} | r of images above y | "
                "r of images below y |", "|---|--:|" + "--:|" * len(TAUS) + "---|---|"]
        for fam in fams + ["pooled"]:
            sel = mine if fam == "pooled" else [r for r in mine if r["family"] == fam]
            up = sorted(r["ratio"] for r in sel if r["psnr"] >= r["psnr_y"])
            down = sorted(r["ratio"] for r in sel if r["psnr"] < r["psnr_y"])

            def span(v: list[float]) -> str:
                return f"{v[0]:.2f}-{v[-1]:.2f} ({len(v)})" if v else "–"

            cells = " | ".join(cell(gain_with_fallback(sel, t)) for t in TAUS)
            out.append(f"| {fam} | {len(sel)} | {cells} | {span(up)} | {span(down)} |")
        pooled = {t: sum(gain_with_fallback(mine, t)) / len(mine) for t in TAUS}
        best = max(TAUS, key=lambda t: (round(pooled[t], 6), t))
        replaced = sum(r["ratio"] > best for r in mine)
        out += ["", f"Best pooled tau: **{'off' if math.isinf(best) else f'{best:g}'}** "
                f"(mean {pooled[best]:+.2f} dB vs {pooled[math.inf]:+.2f} off; {replaced} of "
                f"{len(mine)} images replaced).", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solvers", nargs="+", default=["fastem", "pan-l0"])
    ap.add_argument("--families", nargs="+",
                    default=["blind-airy-blur", "blind-gaussian-blur-wide",
                             "blind-motion-blur-wide", "blind-motion-blur"])
    ap.add_argument("--images", type=int, default=20, help="validation images 0..N-1")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--rows", type=Path, required=True, help="JSONL of per-image rows (resumable)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    have = [json.loads(line) for line in args.rows.read_text().splitlines()] \
        if args.rows.is_file() else []
    done = {(r["solver"], r["family"], r["index"]) for r in have}
    if not args.report_only:
        for solver in args.solvers:
            for fam in args.families:
                todo = [i for i in range(args.images) if (solver, fam, i) not in done]
                for b in range(0, len(todo), args.batch):
                    rows = restore_rows(solver, fam, todo[b:b + args.batch])
                    with args.rows.open("a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in rows)
                    have += rows
                    print(f"{solver} {fam}: {len(rows)} images, r = "
                          + ", ".join(f"{r['ratio']:.2f}" for r in rows), flush=True)
    keep = {(r["solver"], r["family"]) for r in have} if args.report_only else \
        {(s, f) for s in args.solvers for f in args.families}
    rows = [r for r in have if (r["solver"], r["family"]) in keep and r["index"] < args.images]
    command = "python benchmarks/tools/blind_discrepancy_valid.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    args.output.write_text(report(rows, command))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
