"""dmplug-video: cost per iteration, and a tiny validation pilot (Base vs Semantic + Pixel).

    # seconds per iteration, one 8-frame 32x32 clip, one thread, with and without the pixel term
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/video_dmplug_pilot.py cost \\
        --frames 8 --iterations 11 -o benchmarks/video_dmplug_cost.md

    # pilot: fashion32 validation clips 0..1 (similarity motion, 8 frames), video SR x4, sigma 0.01
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/video_dmplug_pilot.py pilot \\
        --clips fashion32-video:valid:0-1 --iterations 200 \\
        --variants base semantic semantic+pixel -o benchmarks/video_dmplug_pilot.md

``cost``: fashion32 validation clip 0, video-sr4 with Gaussian noise 0.01, seed 0; for each
variant one run of ``--iterations`` (the first iteration, which warms up, is left out of the
mean: s/iteration is the wall time of iterations 2..N over N - 1, read with a callback); Base is
run first and last, so the spread of its two rows shows the timing noise.

``pilot``: the clips measured with video-sr4, ``gaussian:0.01``, measurement seed 0; each variant
run with solver seed 0 for ``--iterations`` Adam steps (no early stopping: the last iterate);
PSNR = mean over frames of the per-frame PSNR (on [0, 1]), WE = the warping error (x 1e-2, Lai et
al.) under the clips' exact flow and mask, both averaged over the clips. Rows: the do-nothing bar
A^+ y (nearest upsampling of the low-resolution frames), the ground truth's WE (the interpolation
floor of the warp), and the variants. Validation clips only: this is where the loss weights are
chosen, never on test clips.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

VARIANTS = {
    "base": dict(semantic=False, pixel=False),
    "semantic": dict(semantic=True, pixel=False),
    "pixel": dict(semantic=False, pixel=True),
    "semantic+pixel": dict(semantic=True, pixel=True),
}


def _header(args: argparse.Namespace, prior) -> list[str]:
    import torch

    cmd = "OMP_NUM_THREADS=1 PYTHONPATH=src python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/tools/video_dmplug_pilot.py", *sys.argv[1:]])
    return [f"- Command: `{cmd}`",
            f"- Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- Prior {prior.name}: sha256 {prior.sha256}", ""]


def _measure(spec: str, frames: int, sigma: float):
    from diffinv.video import get_clips, measure_clip

    cs = get_clips(spec, frames=frames)
    m = measure_clip(cs.clips, "video-sr4", f"gaussian:{sigma}", 0, indices=cs.indices,
                     flow=cs.flows, valid=cs.valid, source=spec)
    return cs, m


def _solver(variant: str, args: argparse.Namespace, iterations: int):
    from diffinv.video.dmplug import DMPlugVideo

    return DMPlugVideo(iterations=iterations, pixel_weight=args.pixel_weight,
                       flow_every=args.flow_every, flow_ema=args.flow_ema,
                       pixel_start=args.pixel_start, rank=args.rank
                       if VARIANTS[variant]["semantic"] else None, **VARIANTS[variant])


def cost(args: argparse.Namespace, prior) -> list[str]:
    import torch

    cs, m = _measure(f"{args.dataset}-video:valid:0", args.frames, args.sigma)
    lines = [f"# dmplug-video: seconds per iteration ({args.frames}-frame 32x32 clip, video SR x4)",
             "", *_header(args, prior),
             f"{args.iterations} iterations per variant; s/iteration over iterations 2..N "
             f"(K = {args.flow_every}: a flow update every K iterations; K = 1 updates every "
             "iteration).", "",
             "| variant | K | s/iteration | flow updates | NFE/iteration |", "|---|--:|--:|--:|--:|"]
    # base again at the end: the spread of its two rows is the timing noise of the machine
    rows = [("base", args.flow_every), ("semantic", args.flow_every),
            ("semantic+pixel", args.flow_every), ("semantic+pixel", 1), ("base", args.flow_every)]
    for variant, K in rows:
        args_k = argparse.Namespace(**{**vars(args), "flow_every": K, "pixel_start": 0})
        stamps: list[float] = []
        res = _solver(variant, args_k, args.iterations)(
            m.y, m.public(), prior, seed=0,
            callback=lambda it, x, s=stamps: s.append(time.perf_counter()))
        per = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        lines.append(f"| {variant} | {K if VARIANTS[variant]['pixel'] else '–'} | {per:.3f} | "
                     f"{int(res.trace['flow_updates'][0])} | {res.nfe / args.iterations:.0f} |")
        print(lines[-1], flush=True)
    from diffinv.video.dmplug import FlowTracker

    clip = cs.clips[:1]
    tr = FlowTracker(1, args.frames, tuple(clip.shape[-2:]), decay=args.flow_ema)
    idx = torch.zeros(1, dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(10):
        tr.update(clip, idx)
    lines += ["", f"One flow update alone (both directions, {args.frames - 1} pairs, DIS at 4x, EMA, "
              f"forward-backward check; mean of 10 on the clean clip): "
              f"{(time.perf_counter() - t0) / 10:.3f} s."]
    print(lines[-1], flush=True)
    return lines


def pilot(args: argparse.Namespace, prior) -> list[str]:
    import torch

    from diffinv.metrics.psnr import psnr
    from diffinv.video import warping_error

    cs, m = _measure(args.clips, args.frames, args.sigma)
    B, T, C, H, W = cs.clips.shape

    def scores(x):
        p = psnr(x.reshape(B * T, C, H, W), cs.clips.reshape(B * T, C, H, W)).reshape(B, T)
        we = warping_error(x, cs.flows, cs.valid)
        return p.mean(1), we * 100

    lines = [f"# dmplug-video pilot: {args.clips}, {T} frames, video SR x4, sigma {args.sigma}",
             "", *_header(args, prior),
             f"Solver: {args.iterations} Adam iterations (lr 1e-2), no early stopping; semantic: "
             f"shared seed + {'full' if args.rank is None else f'rank-{args.rank}'} residuals; "
             f"pixel: lambda {args.pixel_weight}, K {args.flow_every}, EMA {args.flow_ema}, from "
             f"iteration {args.pixel_start}. PSNR: mean over frames (dB); WE x 1e-2 under the "
             "exact flow. Means over the clips; per clip (PSNR/WE) in brackets. N = "
             f"{B} clips: a pilot, not a result.", "",
             "| row | PSNR | WE x1e-2 | s/clip |", "|---|--:|--:|--:|"]

    def row(name, x, secs=None):
        p, we = scores(x)
        per = ", ".join(f"{a:.2f}/{b:.3f}" for a, b in zip(p.tolist(), we.tolist(), strict=True))
        lines.append(f"| {name} | {p.mean():.2f} | {we.mean():.3f} [{per}] | "
                     f"{'–' if secs is None else f'{secs:.0f}'} |")
        print(lines[-1], flush=True)

    op = m.make_operator()
    row("A^+ y (nearest upsampling)", op.adjoint(m.y, **m.params).mul(16).clamp(-1, 1))
    row("ground truth (WE floor)", cs.clips)
    for variant in args.variants:
        res = _solver(variant, args, args.iterations)(m.y, m.public(), prior, seed=0)
        row(f"dmplug-video {variant}", res.x, res.seconds / B)
        if args.save:
            torch.save({"x": res.x, "trace": {k: v for k, v in res.trace.items()
                                               if k in ("loss", "data", "pixel_term")}},
                       Path(args.save) / f"{variant}.pt")
    return lines


def main() -> None:
    import torch

    from diffinv import load_prior

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("cost", "pilot"))
    ap.add_argument("--dataset", default="fashion32")
    ap.add_argument("--clips", default="fashion32-video:valid:0-1")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--variants", nargs="+", default=["base", "semantic+pixel"],
                    choices=list(VARIANTS))
    ap.add_argument("--pixel-weight", type=float, default=0.1)
    ap.add_argument("--flow-every", type=int, default=10)
    ap.add_argument("--flow-ema", type=float, default=0.9)
    ap.add_argument("--pixel-start", type=int, default=50)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="folder for the outputs (not committed)")
    ap.add_argument("-o", "--out", default=None, help="markdown file to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.dataset)
    lines = cost(args, prior) if args.mode == "cost" else pilot(args, prior)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
