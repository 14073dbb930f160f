"""CL-DPS encoder training curves: validation retrieval and validation PSNR against training steps.

For a ``diffinv train-likelihood`` run folder (``--val-every`` logs the retrieval accuracy and
``x_beats_y`` in ``train_log.jsonl``; ``--keep-every`` keeps ``checkpoint_stepN.pt``), this tool
restores fashion32 *validation* images 0..N-1 (never test images) with CL-DPS guided by the
encoder of each kept checkpoint, on each blind family at Gaussian sigma ``--sigma`` (measurement
seed ``--seed``; solver seed 0), and appends one JSON line per (step, family, image) to
``RUN/curve.jsonl`` (a rerun skips the rows it has: resumable). It then writes ``RUN/curve.md``
(mean PSNR per step and family, beside the measurement's own PSNR: the do-nothing bar) and
``RUN/curve.png`` (retrieval, x_beats_y and mean PSNR against the step), and prints the Markdown.

    nice -n 19 python benchmarks/tools/cldps_curve.py training/runs/likelihood-fashion32-crop16-hard \
        --images 8 --threads 1

The solver settings default to the benchmarked CL-DPS row (DDIM 100 steps, s = 0.1, intensity
weight 30) with patch stride 8; they were tuned for the whole-image encoder, so a crop encoder's
curve is a convergence check, not a tuned result.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

FAMILIES = {"rotation": "blind-rotation-blur", "zoom": "blind-zoom-blur",
            "motion": "blind-motion-blur", "gaussian": "blind-gaussian-blur"}


def kept_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the run's ``checkpoint_stepN.pt`` files, by step."""
    out = []
    for p in run.glob("checkpoint_step*.pt"):
        m = re.fullmatch(r"checkpoint_step(\d+)\.pt", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
    return rows


def summarise(run: Path, rows: list[dict], settings: dict, command: str) -> str:
    """The Markdown table (and the PNG beside it) of the rows and the run's validation log."""
    from diffinv.plots import plot_curves

    val = [r for r in read_rows(run / "train_log.jsonl") if r.get("event") == "val"]
    fams = sorted({r["family"] for r in rows})
    steps = sorted({r["step"] for r in rows})
    mean: dict[tuple[int, str], float] = {}
    bar: dict[str, float] = {}
    for s in steps:
        for f in fams:
            v = [r["psnr"] for r in rows if r["step"] == s and r["family"] == f]
            if v:
                mean[s, f] = sum(v) / len(v)
    for f in fams:
        ys = {r["image"]: r["psnr_y"] for r in rows if r["family"] == f}
        bar[f] = sum(ys.values()) / len(ys)
    n = max((sum(1 for r in rows if r["step"] == s and r["family"] == f)
             for s in steps for f in fams), default=0)
    lines = [f"# CL-DPS encoder training curve: {run}", "",
             f"- Made by: `{command}`",
             f"- CL-DPS settings: {json.dumps(settings)}; fashion32 validation images 0..{n - 1}",
             "- PSNR: mean over the images (dB); y: the measurement itself as the estimate", "",
             "| step | retrieval | x beats y | " + " | ".join(fams) + " |",
             "|--:|--:|--:|" + "--:|" * len(fams),
             "| y (do nothing) | | | " + " | ".join(f"{bar[f]:.2f}" for f in fams) + " |"]
    by_step = {r["step"]: r for r in val}
    for s in sorted(set(steps) | set(by_step)):
        v = by_step.get(s, {})
        cells = [f"{mean[s, f]:.2f}" if (s, f) in mean else "" for f in fams]
        acc = f"{v['acc']:.3f}" if "acc" in v else ""
        beats = f"{v['x_beats_y']:.3f}" if "x_beats_y" in v else ""
        lines.append(f"| {s} | {acc} | {beats} | " + " | ".join(cells) + " |")
    curves = {f"PSNR {f}": ([s for s in steps if (s, f) in mean],
                            [mean[s, f] for s in steps if (s, f) in mean]) for f in fams}
    if curves:
        plot_curves(curves, run / "curve_psnr.png", ylabel="dB",
                    title="CL-DPS validation PSNR vs encoder training step")
    if val:
        plot_curves({"retrieval": ([r["step"] for r in val], [r["acc"] for r in val]),
                     "x beats y": ([r["step"] for r in val], [r["x_beats_y"] for r in val])},
                    run / "curve_retrieval.png", ylabel="fraction",
                    title="validation retrieval vs encoder training step")
    text = "\n".join(lines) + "\n"
    (run / "curve.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the train-likelihood --out folder")
    ap.add_argument("--images", type=int, default=8, help="validation images 0..N-1")
    ap.add_argument("--families", default="rotation,zoom,motion,gaussian")
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0, help="measurement seed")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--intensity-weight", type=float, default=30.0)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--energy", default="projection")
    ap.add_argument("--every", type=int, default=1, help="only every k-th kept checkpoint")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffinv.data import load_split
    from diffinv.diffusion.zoo import load_prior
    from diffinv.learn.moco import export_likelihood
    from diffinv.metrics.psnr import psnr
    from diffinv.physics import make_operator, measure
    from diffinv.seeding import image_generators
    from diffinv.solvers import make_solver

    settings = {"sampler": args.sampler, "steps": args.steps, "scale": args.scale,
                "intensity_weight": args.intensity_weight, "stride": args.stride,
                "energy": args.energy}
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/tools/cldps_curve.py",
                                                *sys.argv[1:]])
    out = args.run / "curve.jsonl"
    rows = read_rows(out)
    if not args.report_only:
        fams = [f.strip() for f in args.families.split(",") if f.strip()]
        prior = load_prior("fashion32")
        x_all = load_split("fashion32", "valid").images[:args.images]
        idx = list(range(args.images))
        done = {(r["step"], r["family"], r["image"]) for r in rows
                if r.get("settings") == settings and r.get("sigma") == args.sigma}
        for step, ckpt in kept_checkpoints(args.run)[::args.every]:
            todo = [f for f in fams if any((step, f, i) not in done for i in idx)]
            if not todo:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                enc = export_likelihood(ckpt, Path(tmp) / "enc.safetensors", prior="fashion32")
                solver = make_solver("cl-dps", encoder=str(enc), **settings)
                for fam in todo:
                    m = measure(x_all, make_operator(FAMILIES[fam]), f"gaussian:{args.sigma}",
                                args.seed, idx)
                    t0 = time.time()
                    res = solver(m.y, m.public(), prior, seed=image_generators(0, idx))
                    sec = (time.time() - t0) / len(idx)
                    p, py = psnr(res.x, x_all), psnr(m.y, x_all)
                    with open(out, "a") as f:
                        for i in idx:
                            row = {"step": step, "family": fam, "image": i, "psnr": float(p[i]),
                                   "psnr_y": float(py[i]), "seconds": sec, "settings": settings,
                                   "sigma": args.sigma, "seed": args.seed}
                            f.write(json.dumps(row) + "\n")
                            rows.append(row)
                    print(f"step {step} {fam}: {float(p.mean()):.2f} dB (y {float(py.mean()):.2f})",
                          flush=True)
    rows = [r for r in rows if r.get("settings") == settings and r.get("sigma") == args.sigma]
    print(summarise(args.run, rows, settings, command))


if __name__ == "__main__":
    main()
