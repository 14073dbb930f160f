"""Seconds per image of the shipped DAVI generators at batch 64, and of DPS in the same process
(issue 23: "images/second at batch 64 against DPS's s/image, measured in one run").

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/davi_speed.py --batch 64 --repeats 5 \
        --threads 1 --dps-batch 4 -o benchmarks/davi_speed.md

For each shipped fashion32 generator: fashion32 test images 0..B-1 measured as in
benchmarks/linear.md (the operator at its defaults, sigma 0.05, seed 0), one warm-up call (loads the
generator), then the median wall time of ``repeats`` calls of the solver on the whole batch,
divided by B. Then, on the same machine and thread count, DPS with its tuned32 parameters for the
task (1,000 steps, as the DPS rows of linear.md) on the first ``--dps-batch`` of those measurements,
timed once (one call of ~30 s/image is not noisy at this precision). The speed-up is DPS s/image
over DAVI s/image. Solver time only: the measurement and the metrics are outside the timers. PSNRs
are over the images each solver ran on (DPS: a handful; its 50-image means are in linear.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

OPERATOR_NAMES = {"sr-avgpool": "sr4", "gaussian-blur": "gauss-deblur", "inpaint-box": "inpaint-box"}


def main() -> None:
    import torch

    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.metrics import get_metric
    from diffinv.physics import measure
    from diffinv.solvers import make_solver
    from diffinv.solvers.davi import shipped_generators

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="DAVI batch (images 0..B-1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed DAVI calls (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--dps-batch", type=int, default=4,
                    help="images DPS is timed on (one batched call; 0: skip DPS)")
    ap.add_argument("-o", "--output", type=Path, help="also write the Markdown here")
    args = ap.parse_args()
    if not 0 <= args.dps_batch <= args.batch:
        ap.error("--dps-batch must lie in 0..--batch")
    torch.set_num_threads(args.threads)
    prior = load_prior("fashion32")
    x = load_split("fashion32", "test").images[: args.batch]
    psnr = get_metric("psnr")
    lines = [f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python {' '.join(sys.argv)}`", "",
             f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
             f"{args.threads} thread(s); DAVI: batch {args.batch}, median of {args.repeats} calls; "
             f"DPS (tuned32, 1,000 steps): one call on images 0..{args.dps_batch - 1}", "",
             "| task | DAVI steps trained | DAVI s/batch | DAVI s/image | DAVI images/s | "
             "DAVI PSNR | DPS s/image | DPS PSNR | speed-up DPS/DAVI |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for card in shipped_generators():
        if card["prior"] != "fashion32":
            continue
        m = measure(x, card["task"], card["noise"], 0, list(range(args.batch)),
                    domain="fashion32")
        solver = make_solver("davi")
        solver(m.y, m.public(), prior, seed=0)  # warm-up: loads and caches the generator
        times, out = [], None
        for _ in range(args.repeats):
            out = solver(m.y, m.public(), prior, seed=0)
            times.append(out.seconds)
        t = statistics.median(times)
        davi_psnr = float(psnr(out.x, x).mean())
        dps_cols = ["", "", ""]
        if args.dps_batch:
            k = args.dps_batch
            sub = measure(x[:k], card["task"], card["noise"], 0, list(range(k)), domain="fashion32")
            dps = make_solver("dps", preset="tuned32", operator=card["task"])
            res = dps(sub.y, sub.public(), prior, seed=0)
            s_dps = res.seconds / k
            dps_cols = [f"{s_dps:.1f}", f"{float(psnr(res.x, x[:k]).mean()):.2f}",
                        f"{s_dps / (t / args.batch):,.0f}x"]
        lines.append(f"| {OPERATOR_NAMES.get(card['task'], card['task'])} | {card['steps']} | "
                     f"{t:.3f} | {t / args.batch:.4f} | {args.batch / t:,.0f} | {davi_psnr:.2f} | "
                     + " | ".join(dps_cols) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        head = ("# DAVI against DPS: seconds per image on this CPU, one run "
                "(fashion32 test images, sigma 0.05, seed 0)\n\n")
        args.output.write_text(head + text)


if __name__ == "__main__":
    main()
