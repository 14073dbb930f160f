"""Figures of the small-data flow study (issue 38): training curves, sample grids, nearest neighbours.

    python benchmarks/tools/flow_study_figures.py training/runs/flow38cpu \\
        --prior n500-full --prior n500-pca171 --prior n500-rand171 -o benchmarks/flow_small_data

For each ``--prior NAME`` it reads ``RUNS/NAME/train_log.jsonl`` and the export
``RUNS/export/NAME/DATASET.safetensors`` and writes into ``-o``:

* ``loss.png``: every run's flow-matching loss, moving average over 20 log lines (25 steps
  each), on one plot. The losses of different sources are not comparable in level (a source
  restricted to k of d dimensions leaves less variance to transport), only in shape: flat means
  trained out at this budget;
* ``samples_NAME.png``: the first 64 samples of the bench (sample i from the generator of
  ``image_seed(seed, i)``, the sampler of ``--steps`` Euler steps): the same images as the first
  64 that ``flow_small_data_cpu.toml`` scores;
* ``neighbours.png``: for the first 16 samples of each prior, the sample above its nearest
  training image (pixel L2, among the N images the prior was trained on, the card's
  ``train_images``), one pair of rows per prior: what the memorisation rate counts.

Nothing here picks anything: the figures show the rows of the table, they do not score them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def read_log(run: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if "loss" in r]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="folder holding one run folder per prior and export/")
    ap.add_argument("--prior", action="append", required=True, help="run name (repeatable)")
    ap.add_argument("--dataset", default="fashion32")
    ap.add_argument("--steps", type=int, default=100, help="Euler steps (the bench's sampler)")
    ap.add_argument("--seed", type=int, default=0, help="the bench's run seed")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffinv.data import load_split, save_image
    from diffinv.data.images import make_grid
    from diffinv.diffusion.zoo import load_prior
    from diffinv.metrics.memorisation import nearest_neighbour_ratios
    from diffinv.plots import moving_average, plot_curves
    from diffinv.seeding import image_generators

    args.output.mkdir(parents=True, exist_ok=True)
    curves = {}
    for name in args.prior:
        steps, losses = read_log(args.runs / name)
        curves[name] = (steps, moving_average(losses, 20))
    plot_curves(curves, args.output / "loss.png", xlabel="step",
                ylabel="flow-matching loss (moving average)", logy=True,
                title="Small-data flow priors: training loss")

    train = load_split(args.dataset, "train").images
    pairs = []
    for name in args.prior:
        path = args.runs / "export" / name / f"{args.dataset}.safetensors"
        prior = load_prior(path)
        card = json.loads(path.with_suffix(".json").read_text())
        n_train = int(card.get("train_images") or len(train))
        x = prior.sample(64, seed=image_generators(args.seed, range(64)), method="euler",
                         steps=args.steps)
        save_image(make_grid(x, ncol=8), args.output / f"samples_{name}.png", scale=2)
        _, nearest = nearest_neighbour_ratios(x[:16], train[:n_train])
        pairs += [x[:16], train[:n_train][nearest]]
        print(f"{name}: samples and neighbours among training images 0..{n_train - 1}", flush=True)
    save_image(make_grid(torch.cat(pairs), ncol=16), args.output / "neighbours.png", scale=2)
    print(f"wrote {args.output}/loss.png, samples_*.png, neighbours.png")


if __name__ == "__main__":
    main()
