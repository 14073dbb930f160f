"""Seconds per image of the shipped DAVI generators at a given batch size (issue 23).

    PYTHONPATH=src python benchmarks/tools/davi_speed.py --batch 64 --repeats 5 --threads 1

For each shipped generator: fashion32 test images 0..B-1 measured as in benchmarks/linear.md (the
operator at its defaults, sigma 0.05, seed 0), one warm-up call (loads the generator), then the
median wall time of ``repeats`` calls of the solver on the whole batch, divided by B. Prints a
Markdown table (solver time only; the measurement and metrics are outside the timer).
"""

from __future__ import annotations

import argparse
import platform
import statistics


def main() -> None:
    import torch

    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.metrics import get_metric
    from diffinv.physics import measure
    from diffinv.solvers import make_solver
    from diffinv.solvers.davi import shipped_generators

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior("fashion32")
    x = load_split("fashion32", "test").images[: args.batch]
    print(f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), batch {args.batch}, {args.repeats} repeats (median)\n")
    print("| generator | task | steps | s/batch | s/image | PSNR (these images) |")
    print("|---|---|--:|--:|--:|--:|")
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
        psnr = float(get_metric("psnr")(out.x, x).mean())
        print(f"| {card['name']} | {card['task']} | {card['steps']} | {t:.3f} | "
              f"{t / args.batch:.4f} | {psnr:.2f} |")


if __name__ == "__main__":
    main()
