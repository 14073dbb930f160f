"""The autoencoder of a latent prior: its validation curve while it trains, its ceiling when done.

    # during training: score the run's checkpoint (EMA weights) on validation images whenever
    # its step changes; one JSON line per step (resumable: steps already scored are skipped)
    python benchmarks/tools/autoencoder_ceiling.py track training/runs/ae \\
        --images fashion32:valid:0-499 -o benchmarks/priors/fashion32-latent_ae_curve.jsonl

    # when exported: the reconstruction ceiling on test images, written into the card
    python benchmarks/tools/autoencoder_ceiling.py ceiling src/diffinv/priors/X.safetensors \\
        --images fashion32:test:0-1999 [--curve CURVE.jsonl] -o benchmarks/priors/X_ceiling.md

``ceiling`` takes an autoencoder export or a latent prior export (its autoencoder is the file
named in its card) and adds ``"reconstruction": {"images", "psnr", "psnr_ci95", "ssim", ...}``
to the autoencoder's card and, for a latent prior, to the prior's card: the PSNR of
``D(E(x))`` (diffinv.latent.evaluate), the most any latent solver can reach on average.
With ``--curve`` the Markdown file carries the validation curve as a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from diffinv.data.datasets import get_images
from diffinv.latent.evaluate import autoencoder_from_checkpoint, reconstruction_scores

T95 = 1.959964  # normal quantile; N is in the hundreds here


def load_images(spec: str) -> torch.Tensor:
    """``DATASET:SPLIT[:INDICES]`` -> those images (diffinv.data's image spec)."""
    return get_images(spec)[0]


def summary(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for k, v in scores.items():
        v = v.double()
        out[k] = float(v.mean())
        out[f"{k}_ci95"] = float(T95 * v.std(unbiased=True) / math.sqrt(len(v)))
    return out


def track(args: argparse.Namespace) -> None:
    run, out = Path(args.run), Path(args.out)
    images = load_images(args.images)
    done = set()
    if out.is_file():
        done = {json.loads(line)["step"] for line in out.read_text().splitlines() if line.strip()}
    total = None
    while True:
        ckpt = run / "checkpoint.pt"
        if ckpt.is_file():
            try:
                model, info = autoencoder_from_checkpoint(ckpt)
            except Exception as e:  # a checkpoint being replaced: try again at the next poll
                print(f"skipped a read: {e}", flush=True)
                model = None
            if model is not None:
                total = info["config"]["steps"]
                if info["step"] not in done:
                    row = {"step": info["step"], "images": args.images,
                           **summary(reconstruction_scores(model, images)), "time": time.time()}
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    done.add(info["step"])
                    print(f"step {row['step']}: psnr {row['psnr']:.2f} ssim {row['ssim']:.3f}",
                          flush=True)
                if total is not None and info["step"] >= total:
                    return
        time.sleep(args.poll)


def plot_curve(curve: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((json.loads(s) for s in curve.read_text().splitlines() if s.strip()),
                  key=lambda r: r["step"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar([r["step"] for r in rows], [r["psnr"] for r in rows],
                yerr=[r["psnr_ci95"] for r in rows], marker="o", ms=3, capsize=2)
    ax.set_xlabel("training step")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.set_title(f"autoencoder on {rows[0]['images']} (EMA)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def ceiling(args: argparse.Namespace) -> None:
    from diffinv.latent.training import load_autoencoder

    path = Path(args.export)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    cards = [card_path]
    if "latent" in card:  # a latent prior: its autoencoder is beside it
        ae_path = path.parent / card["latent"]["autoencoder"]
        cards.append(ae_path.with_suffix(".json"))
    else:
        ae_path = path
    model, ae_card = load_autoencoder(ae_path)
    images = load_images(args.images)
    t0 = time.time()
    stats = summary(reconstruction_scores(model, images))
    entry = {"images": args.images, "n": len(images), **{k: round(v, 4) for k, v in stats.items()},
             "definition": "PSNR/SSIM of clamp(D(E(x))) against x, E the posterior mean; mean "
                           "and 95% normal half-width over the images"}
    for c in cards:
        d = json.loads(c.read_text())
        d["reconstruction"] = entry
        c.write_text(json.dumps(d, indent=2))
    md = Path(args.out)
    lines = [f"# Autoencoder reconstruction ceiling: {ae_path.name}", "",
             f"- Command: python benchmarks/tools/autoencoder_ceiling.py ceiling {path} "
             f"--images {args.images}" + (f" --curve {args.curve}" if args.curve else "")
             + f" -o {md}",
             f"- Autoencoder: {json.dumps(ae_card['autoencoder'])}, {ae_card['steps']} steps, "
             f"EMA weights, SHA-256 {ae_card['sha256'][:16]}...",
             f"- Images: {args.images} (N = {len(images)}); {time.time() - t0:.1f} s on CPU", "",
             "The PSNR of the round trip D(E(x)) is the ceiling of every latent solver on these "
             "images: no latent method can return a better image than the best decodable one, and "
             "the encoder's round trip is the practical stand-in for it.", "",
             "| images | N | PSNR (dB) | SSIM |", "|---|--:|--:|--:|",
             f"| {args.images} | {len(images)} | {stats['psnr']:.2f} ± {stats['psnr_ci95']:.2f} "
             f"| {stats['ssim']:.4f} ± {stats['ssim_ci95']:.4f} |", ""]
    if args.curve:
        png = md.with_name(md.stem + "_curve.png")
        plot_curve(Path(args.curve), png)
        lines += [f"Validation curve during training ({args.curve}, EMA weights at each "
                  f"checkpoint): ![curve]({png.name})", ""]
    md.write_text("\n".join(lines))
    print(md.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("track", help="score a training run's checkpoint whenever its step changes")
    t.add_argument("run")
    t.add_argument("--images", default="fashion32:valid:0-499")
    t.add_argument("--poll", type=float, default=60.0, help="seconds between looks")
    t.add_argument("-o", "--out", required=True)
    t.set_defaults(func=track)
    c = sub.add_parser("ceiling", help="the reconstruction ceiling of an export, into its card")
    c.add_argument("export")
    c.add_argument("--images", default="fashion32:test:0-1999")
    c.add_argument("--curve", default=None)
    c.add_argument("-o", "--out", required=True)
    c.set_defaults(func=ceiling)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.func(args)


if __name__ == "__main__":
    main()
