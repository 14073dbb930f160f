"""dmplug-video: cost per iteration, and a tiny validation pilot (Base vs Semantic + Pixel).

    # seconds per iteration, one 8-frame 32x32 clip, one thread, with and without the pixel term
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/video_dmplug_pilot.py cost \\
        --frames 8 --iterations 11 -o benchmarks/video_dmplug_cost.md

    # pilot: fashion32 validation clips 0..1 (similarity motion, 8 frames), video SR x4, sigma 0.01
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/video_dmplug_pilot.py pilot \\
        --clips fashion32-video:valid:0-1 --iterations 200 \\
        --variants base semantic semantic+pixel -o benchmarks/video_dmplug_pilot.md

    # budget curve: PSNR / WE against the iteration on validation clips, and where ES-WMV stops
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/video_dmplug_pilot.py curve \\
        --clips fashion32-video:valid:0-1 --iterations 500 \\
        --variants base semantic pixel semantic+pixel semantic+pixel@1 \\
        -o benchmarks/video_dmplug_curve.md

``curve``: as ``pilot`` (no early stopping, the truth read for evaluation only), but every
variant's PSNR is logged at every iteration and WE every ``--every`` iterations, and ES-WMV
trackers (window W, patience P of ``--wmv``) are fed the iterates on the side: the table gives,
per checkpoint, PSNR / WE of the iterate, and per rule the iteration where it stops and the PSNR /
WE of what it picks (exactly what a run with ``early_stop="wmv"`` would return, capped at
``--iterations``); a PNG plot beside the markdown file. A variant ``NAME@L`` runs variant NAME
with pixel weight lambda = L. Validation clips only: the budget is chosen here.

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


def _variant(name: str, args: argparse.Namespace) -> tuple[str, float]:
    """``NAME`` or ``NAME@LAMBDA`` -> (variant, pixel weight)."""
    base, _, lam = name.partition("@")
    if base not in VARIANTS:
        raise SystemExit(f"unknown variant {base!r}; choose from {sorted(VARIANTS)}")
    return base, float(lam) if lam else args.pixel_weight


def _solver(variant: str, args: argparse.Namespace, iterations: int):
    from diffinv.video.dmplug import DMPlugVideo

    variant, lam = _variant(variant, args)
    return DMPlugVideo(iterations=iterations, pixel_weight=lam,
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


def curve(args: argparse.Namespace, prior) -> list[str]:
    import torch

    from diffinv.metrics.psnr import psnr
    from diffinv.solvers.early_stopping import WMVEarlyStopping
    from diffinv.video import warping_error

    cs, m = _measure(args.clips, args.frames, args.sigma)
    B, T, C, H, W = cs.clips.shape
    rules = [tuple(int(v) for v in r.split(",")) for r in args.wmv]
    checkpoints = [it for it in range(args.every - 1, args.iterations, args.every)]

    def scores(x):
        p = psnr(x.reshape(B * T, C, H, W), cs.clips.reshape(B * T, C, H, W)).reshape(B, T)
        return p.mean(1).double(), warping_error(x, cs.flows, cs.valid).double() * 100

    lines = [f"# dmplug-video budget curve: {args.clips}, {T} frames, video SR x4, sigma "
             f"{args.sigma}", "", *_header(args, prior),
             f"Every variant: {args.iterations} Adam iterations (lr 1e-2) with no early stopping, "
             f"solver seed 0; pixel term (where on): K {args.flow_every}, EMA {args.flow_ema}, from "
             f"iteration {args.pixel_start}, lambda as named (`@L`: lambda = L, else "
             f"{args.pixel_weight}); semantic: shared seed + "
             f"{'full' if args.rank is None else f'rank-{args.rank}'} residuals. PSNR: mean over "
             "frames (dB), WE x 1e-2 under the exact flow, both means over the clips. ES-WMV W/P: "
             "the trackers fed every iterate on the side; 'stop' = the mean iteration where the "
             f"rule stops (capped at {args.iterations}: a clip that does not stop counts as "
             f"{args.iterations}), PSNR/WE of the iterate it picks. The truth is read for "
             f"evaluation only. N = {B} validation clips: the budget is chosen here.", ""]
    table: dict[str, dict[str, float]] = {}
    curves: dict[str, torch.Tensor] = {}
    for name in args.variants:
        es = [WMVEarlyStopping(w, p) for w, p in rules]
        we_at: dict[int, float] = {}

        def cb(it, x, es=es, we_at=we_at):
            for e in es:
                if e.started and bool(e.stopped.all()):
                    continue
                e.update(x, it)
            if it in checkpoints:
                we_at[it] = float(scores(x)[1].mean())

        t0 = time.perf_counter()
        res = _solver(name, args, args.iterations)(m.y, m.public(), prior, seed=0,
                                                   truth=cs.clips, callback=cb)
        secs = time.perf_counter() - t0
        trace = res.trace["psnr"]  # (iterations, B)
        curves[name] = trace.mean(1)
        row = {f"psnr@{it + 1}": float(trace[it].mean()) for it in checkpoints}
        row.update({f"we@{it + 1}": we_at[it] for it in checkpoints})
        row["oracle"] = float(trace.max(0).values.mean())
        row["s/clip"] = secs / B
        for (w, p), e in zip(rules, es, strict=True):
            stop = torch.where(e.stopped, e.stop_iteration + 1,
                               torch.full_like(e.stop_iteration, args.iterations))
            picked = e.pick(res.x)
            ps, we = scores(picked)
            row[f"wmv{w}/{p} stop"] = float(stop.double().mean())
            row[f"wmv{w}/{p} psnr"] = float(ps.mean())
            row[f"wmv{w}/{p} we"] = float(we.mean())
        table[name] = row
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    op = m.make_operator()
    p0, we0 = scores(op.adjoint(m.y, **m.params).mul(16).clamp(-1, 1))
    _, wet = scores(cs.clips)
    lines += [f"Do-nothing bar A^+ y (nearest upsampling): PSNR {float(p0.mean()):.2f}, WE "
              f"{float(we0.mean()):.3f}; ground truth WE (floor) {float(wet.mean()):.3f}.", ""]
    cols = [f"psnr@{it + 1}" for it in checkpoints]
    lines += ["PSNR of the iterate (dB):", "", "| variant | " + " | ".join(
        c.replace("psnr@", "it ") for c in cols) + " | oracle | s/clip |",
        "|---|" + "--:|" * (len(cols) + 2)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols)
                     + f" | {row['oracle']:.2f} | {row['s/clip']:.0f} |")
    cols = [f"we@{it + 1}" for it in checkpoints]
    lines += ["", "WE x 1e-2 of the iterate:", "", "| variant | " + " | ".join(
        c.replace("we@", "it ") for c in cols) + " |", "|---|" + "--:|" * len(cols)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    lines += ["", "ES-WMV (what a run with early_stop='wmv' returns, capped at the budget):", "",
              "| variant | " + " | ".join(f"W {w} P {p}: stop / PSNR / WE" for w, p in rules)
              + " |", "|---|" + "--:|" * len(rules)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{row[f'wmv{w}/{p} stop']:.0f} / {row[f'wmv{w}/{p} psnr']:.2f} / "
            f"{row[f'wmv{w}/{p} we']:.3f}" for w, p in rules) + " |")
    if args.out:
        from diffinv.plots import plot_curves

        xs = list(range(1, args.iterations + 1))
        png = plot_curves({name: (xs, c.tolist()) for name, c in curves.items()}
                          | {"A^+ y": ([1, args.iterations], [float(p0.mean())] * 2)},
                          Path(args.out).with_suffix(".png"), xlabel="iteration",
                          ylabel="PSNR (dB), mean over clips",
                          title=f"dmplug-video, {args.clips}, video SR x4")
        lines += ["", f"![PSNR against the iteration]({png.name})"]
    return lines


def main() -> None:
    import torch

    from diffinv import load_prior

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("cost", "pilot", "curve"))
    ap.add_argument("--dataset", default="fashion32")
    ap.add_argument("--clips", default="fashion32-video:valid:0-1")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--variants", nargs="+", default=["base", "semantic+pixel"],
                    help=f"from {sorted(VARIANTS)}; NAME@L sets the pixel weight lambda = L")
    ap.add_argument("--every", type=int, default=50, help="curve: a checkpoint every N iterations")
    ap.add_argument("--wmv", nargs="+", default=["50,300", "25,100"],
                    help="curve: ES-WMV rules W,P fed on the side")
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
    lines = {"cost": cost, "pilot": pilot, "curve": curve}[args.mode](args, prior)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
