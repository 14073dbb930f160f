"""diffinv's DPS and DDRM against deepinv's, with the same network, measurements and step schedule
(issue 25: benchmarks/vs_deepinv.md).

Needs an environment with deepinv and torchvision (``pip install -e '.[deepinv]'`` in a separate
virtual environment; the core never imports them). Shard over the two cores, then report:

    OMP_NUM_THREADS=1 python benchmarks/tools/vs_deepinv.py run --shard 0/2 &
    OMP_NUM_THREADS=1 python benchmarks/tools/vs_deepinv.py run --shard 1/2 &
    # then DPS on all 50 images (deepinv at the weight picked on validation images):
    OMP_NUM_THREADS=1 python benchmarks/tools/vs_deepinv.py run --shard 0/2 --methods dps \
        --dps-n 50 --dps-weights 300 &   # and --shard 1/2
    OMP_NUM_THREADS=1 python benchmarks/tools/vs_deepinv.py memory --index 0 --methods ddrm
    OMP_NUM_THREADS=1 python benchmarks/tools/vs_deepinv.py memory --index 0 --methods dps \
        --dps-steps 50
    python benchmarks/tools/vs_deepinv.py report -o benchmarks/vs_deepinv.md
    OMP_NUM_THREADS=1 python benchmarks/tools/vs_deepinv.py pick-weight --images 4 \
        -o benchmarks/vs_deepinv_dps_weight.md

What runs. fashion32 test images 0..N-1; Gaussian deblurring, SR x4 (average pooling) and random
70% inpainting at sigma = 0.05 ([-1, 1] units), each measurement made by ``diffinv.physics.measure``
with seed 0 exactly as in benchmarks/linear.md (the same y). Per image, one process runs, one after
the other on the same thread: diffinv DDRM and deepinv DDRM, diffinv DPS and deepinv DPS, batch 1.

* The network: the embedded fashion32 prior; deepinv gets it through
  ``diffinv.interop.deepinv.as_deepinv_denoiser`` and the operator through ``to_deepinv`` (our SVD as
  a deepinv ``DecomposablePhysics``), with the measurement moved to deepinv's [0, 1] units
  (``measurement_to_unit_range``: ``(y + A 1) / 2``, sigma / 2). Outputs are mapped back
  (``2 u - 1``) and scored against the same truth.
* DDRM: ours with its tuned32 setting (100 steps of the 1,000 with its
  leading spacing, eta = 1, eta_b = 1);
  deepinv's ``DDRM`` with the noise levels of those same 100 timesteps,
  ``sigma_t = sqrt((1 - abar_t) / abar_t) / 2`` ([0, 1] units), eta = 1, etab = 1.
* DPS: ours with tuned32 (1,000 steps, zeta 1 on Gaussian deblurring, 0.3 on SR and random
  inpainting: the DPS rows of linear.md), on all 50 images; deepinv's weight-1 run on images 0..9
  only (the default ``--dps-n 10``: 1,000 steps with backpropagation cost ~37 s per image and
  library here, and weight 1 fails plainly); deepinv's ``DPS`` at its defaults (1,000
  steps of its continuous VP SDE, beta 0.1 -> 20, the DDPM solver, ``"norm"`` guidance) with its
  default weight 1 and with weight 300, the best of 1 / 30 / 100 / 300 on validation images
  (``pick-weight``: benchmarks/vs_deepinv_dps_weight.md; deepinv puts the guidance into the score,
  where the ancestral step scales it by about beta_t, so its weight is not DPS's zeta), both with
  ``dtype=float32`` (its default float64 state would slow it for no gain at 32x32).
* Seconds: wall time of the solver call alone (the rows also keep ``timed``'s resident-set
  growth, ``peak_mib``, which reads 0 at 32x32: the C allocator reuses memory of earlier calls).
  Peak memory in the table: ``memory`` (``peak_memory.peak_tensor_mib``), the most tensor memory
  alive at once in one profiled solve of test image 0 per task, method and library, exact on CPU
  (to ``vs_deepinv_memory.jsonl``); DPS's from a 50-step run (its per-step memory does not
  depend on the count: ours reads the same at 1,000 steps, vs_deepinv_memory_dps1000.jsonl; the
  1,000-step trace of deepinv's DPS outgrew this machine's 24 GiB).
Rows go to ``benchmarks/vs_deepinv.part{I}of{N}.jsonl`` as they finish; a rerun resumes.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path
from typing import Any

from peak_memory import peak_tensor_mib, timed

OUT_DIR = Path(__file__).resolve().parents[1]
TASKS = {
    "gauss-deblur": ("gaussian-blur", {}),
    "sr4": ("sr-avgpool", {"factor": 4}),
    "inpaint-random": ("inpaint-random", {}),
}
SIGMA = 0.05
SEED = 0


def solve_one(lib: str, meth: str, *, m: Any, op_name: str, prior: Any, denoiser: Any, y01: Any,
              physics: Any, shape: tuple[int, ...], seed: int, ddrm_sigmas: list[float],
              dps_weight: float, device: str, dps_steps: int = 1000) -> Any:
    """One restoration in [-1, 1] units by ``lib`` ("diffinv" | "deepinv") with ``meth``
    (``dps_steps``: DPS's step count, 1,000 except in ``memory --dps-steps``)."""
    import deepinv as dinv
    import torch

    from diffinv.seeding import image_generators
    from diffinv.solvers import make_solver

    if lib == "diffinv":
        extra = {"steps": dps_steps} if meth == "dps" else {}
        solver = make_solver(meth, preset="tuned32", operator=op_name, **extra)
        return solver(m.y, m.public(), prior, seed=image_generators(seed, [0])).x
    if meth == "ddrm":
        model = dinv.sampling.DDRM(denoiser=denoiser, sigmas=ddrm_sigmas, eta=1.0, etab=1.0)
        torch.manual_seed(seed)
        return 2 * model(y01, physics) - 1
    model = dinv.sampling.DPS(denoiser=denoiser, num_steps=dps_steps, weight=dps_weight,
                              dtype=torch.float32, device=device)
    torch.manual_seed(seed)
    return 2 * model(y01, physics, x_init=shape) - 1


def runs_for(i: int, args: argparse.Namespace) -> list[tuple[str, str, str, float]]:
    """(task, method, library label, deepinv DPS weight) of image ``i``, in running order."""
    out = []
    for task in args.tasks:
        if "ddrm" in args.methods:
            out += [(task, "ddrm", "diffinv", 0.0), (task, "ddrm", "deepinv", 0.0)]
        if "dps" in args.methods and i < args.dps_n:
            out.append((task, "dps", "diffinv", 0.0))
            out += [(task, "dps", f"deepinv weight {w:g}", w) for w in args.dps_weights]
    return out


def _setup(args: argparse.Namespace) -> tuple[Any, Any, list[float], Any]:
    """The prior, its deepinv denoiser, DDRM's noise levels and the test split."""
    import torch

    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.diffusion.schedule import spaced_timesteps
    from diffinv.interop.deepinv import as_deepinv_denoiser
    from diffinv.solvers import make_solver

    torch.set_num_threads(args.threads)
    prior = load_prior("fashion32", device=args.device)
    ab = prior.schedule.alpha_bar.double()
    ours_ddrm = make_solver("ddrm", preset="tuned32", operator="gaussian-blur")  # same on all 3
    ts = sorted(spaced_timesteps(prior.num_timesteps, ours_ddrm.steps, ours_ddrm.spacing),
                reverse=True)
    ddrm_sigmas = [float(((1 - ab[t]) / ab[t]).sqrt() / 2) for t in ts]
    return prior, as_deepinv_denoiser(prior), ddrm_sigmas, load_split("fashion32", "test")


def _problem(i: int, task: str, x: Any, device: str) -> tuple[str, Any, Any, Any]:
    """Operator name, diffinv measurement, deepinv measurement and physics of image ``i``."""
    from diffinv.interop.deepinv import measurement_to_unit_range, to_deepinv
    from diffinv.physics import make_operator, measure

    op_name, op_kw = TASKS[task]
    op = make_operator(op_name, **op_kw).to(device)
    m = measure(x, op, f"gaussian:{SIGMA}", SEED, [i], domain="fashion32", source="fashion32:test")
    y01, s01 = measurement_to_unit_range(m.y, op, m.params, SIGMA)
    physics = to_deepinv(op, m.params, image_shape=tuple(x.shape), noise_sigma=s01, device=device)
    return op_name, m, y01, physics


def _done(path: Path) -> set[tuple[str, str, str, int]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["task"], r["method"], r["library"], r["index"]) for r in rows}


def run(args: argparse.Namespace) -> None:
    import deepinv as dinv
    import torch

    from diffinv.metrics import get_metric

    k, n_shards = (int(v) for v in args.shard.split("/"))
    out_path = OUT_DIR / f"vs_deepinv.part{k}of{n_shards}.jsonl"
    done = _done(out_path)
    prior, denoiser, ddrm_sigmas, data = _setup(args)
    metrics = {name: get_metric(name) for name in ("psnr", "ssim")}
    mine = [i for i in range(args.n) if i % n_shards == k]
    todo = [(i, r) for i in mine for r in runs_for(i, args) if (r[0], r[1], r[2], i) not in done]
    print(f"vs_deepinv shard {k}/{n_shards}: {len(todo)} runs to do -> {out_path}", flush=True)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="run", file=sys.stderr)
    cache: dict[tuple[int, str], Any] = {}
    with out_path.open("a") as out:
        for i, (task, meth, lib, weight) in todo:
            x = data.images[i:i + 1].to(args.device)
            if (i, task) not in cache:
                cache = {(i, task): _problem(i, task, x, args.device)}
            op_name, m, y01, physics = cache[(i, task)]
            prior.reset_nfe()
            call = functools.partial(
                solve_one, lib.split()[0], meth, m=m, op_name=op_name, prior=prior,
                denoiser=denoiser, y01=y01, physics=physics, shape=tuple(x.shape),
                seed=1000 * i + 7, ddrm_sigmas=ddrm_sigmas, dps_weight=weight,
                device=args.device)
            xh, sec, mem = timed(call, args.device)
            xh = xh.detach().float().clamp(-1, 1)
            row = {"task": task, "method": meth, "library": lib, "index": i,
                   "seconds": sec, "peak_mib": mem, "nfe": prior.nfe,
                   **{name: float(f(xh, x).reshape(-1)[0]) for name, f in metrics.items()},
                   "threads": args.threads, "device": args.device,
                   "torch": torch.__version__, "deepinv": dinv.__version__,
                   "machine": f"{platform.machine()} {platform.processor()}"}
            out.write(json.dumps(row) + "\n")
            out.flush()
            bar.update(1)
    bar.close()


def memory(args: argparse.Namespace) -> None:
    """Peak tensor memory (``peak_memory.peak_tensor_mib``, exact on CPU) of every (task, method,
    library) on test image ``--index``, one run each, appended to vs_deepinv_memory.jsonl."""
    import torch

    out_path = OUT_DIR / "vs_deepinv_memory.jsonl"
    done = _done(out_path)
    prior, denoiser, ddrm_sigmas, data = _setup(args)
    i = args.index
    x = data.images[i:i + 1]
    args.dps_n = i + 1
    with out_path.open("a") as out:
        for task, meth, lib, weight in runs_for(i, args):
            if (task, meth, lib, i) in done:
                continue
            op_name, m, y01, physics = _problem(i, task, x, "cpu")
            call = functools.partial(
                solve_one, lib.split()[0], meth, m=m, op_name=op_name, prior=prior,
                denoiser=denoiser, y01=y01, physics=physics, shape=tuple(x.shape),
                seed=1000 * i + 7, ddrm_sigmas=ddrm_sigmas, dps_weight=weight, device="cpu",
                dps_steps=args.dps_steps)
            _, mib = peak_tensor_mib(call)
            row = {"task": task, "method": meth, "library": lib, "index": i,
                   "peak_tensor_mib": mib, "torch": torch.__version__}
            if meth == "dps":
                row["steps"] = args.dps_steps
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{task} {meth} {lib}: {mib:.2f} MiB", flush=True)


def pick_weight(args: argparse.Namespace) -> None:
    """deepinv DPS's weight on fashion32 VALIDATION images (seed 1, never the test images):
    Gaussian deblurring at sigma 0.05, 1,000 steps, mean PSNR per weight, Markdown to -o."""
    import deepinv as dinv
    import torch

    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.interop.deepinv import as_deepinv_denoiser, measurement_to_unit_range, to_deepinv
    from diffinv.metrics import get_metric
    from diffinv.physics import make_operator, measure

    torch.set_num_threads(args.threads)
    prior = load_prior("fashion32")
    denoiser = as_deepinv_denoiser(prior)
    x = load_split("fashion32", "valid").images[: args.images]
    op = make_operator("gaussian-blur")
    m = measure(x, op, f"gaussian:{SIGMA}", 1, list(range(args.images)))
    y01, s01 = measurement_to_unit_range(m.y, op, m.params, SIGMA)
    physics = to_deepinv(op, m.params, image_shape=tuple(x.shape), noise_sigma=s01)
    psnr = get_metric("psnr")
    lines = [f"# deepinv DPS weight on fashion32 validation images 0..{args.images - 1}", "",
             f"Command: `python benchmarks/tools/vs_deepinv.py {' '.join(sys.argv[1:])}` "
             f"(deepinv {dinv.__version__}); Gaussian deblurring, sigma = {SIGMA}, seed 1, "
             "1,000 steps, the denoiser and physics of vs_deepinv.md.", "",
             "| weight | mean PSNR | per image |", "|--:|--:|---|"]
    for w in args.weights:
        model = dinv.sampling.DPS(denoiser=denoiser, num_steps=1000, weight=w,
                                  dtype=torch.float32)
        torch.manual_seed(3)
        u = model(y01, physics, x_init=tuple(x.shape))
        v = psnr((2 * u - 1).clamp(-1, 1), x).reshape(-1).tolist()
        lines.append(f"| {w:g} | {sum(v) / len(v):.2f} | {', '.join(f'{a:.2f}' for a in v)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)


def report(args: argparse.Namespace) -> None:
    import math
    import statistics

    from diffinv.bench.stats import mean_interval

    rows = []
    for p in sorted(OUT_DIR.glob("vs_deepinv.part*of*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if not rows:
        sys.exit("no rows: run `vs_deepinv.py run` first")
    mem_path = OUT_DIR / "vs_deepinv_memory.jsonl"
    mem, mem_steps = {}, {}
    if mem_path.exists():
        for line in mem_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                mem[(r["task"], r["method"], r["library"])] = r["peak_tensor_mib"]
                if "steps" in r:
                    mem_steps.setdefault(r["method"], set()).add(r["steps"])

    def mib(key: tuple[str, str, str]) -> str:
        return f"{mem[key]:.2f}" if key in mem else "-"

    by = {}
    for r in rows:
        by.setdefault((r["task"], r["method"]), {}).setdefault(r["library"], {})[r["index"]] = r

    def mean_ci(v: list[float]) -> str:
        if len(v) < 2:
            return f"{v[0]:.2f}" if v else "-"
        ci = mean_interval(v)
        return f"{ci.center:.2f} ± {ci.high - ci.center:.2f}"

    def paired_ratio(num: list[float], den: list[float]) -> str:
        """Geometric mean of the per-image ratios num_i / den_i with its 95% interval (a t
        interval on the log ratios): both solves of an image ran back to back, so the machine's
        drift over a long run cancels, which a ratio of medians does not do."""
        ci = mean_interval([math.log(n / d) for n, d in zip(num, den, strict=True)])
        if ci.n < 2:
            return f"{math.exp(ci.center):.2f}"
        return f"{math.exp(ci.center):.2f} [{math.exp(ci.low):.2f}, {math.exp(ci.high):.2f}]"

    r0 = rows[0]
    lines = [
        "# diffinv vs deepinv: DPS and DDRM with the same network, measurements and schedule",
        "",
        "Made by `benchmarks/tools/vs_deepinv.py` (commands and settings in its docstring): "
        f"deepinv {r0['deepinv']}, torch {r0['torch']}, {r0['machine']}, {r0['threads']} thread(s) "
        f"per process, device {r0['device']}; fashion32 test images, sigma = {SIGMA}, seed {SEED}; "
        "batch 1, both libraries run one after the other on each image in the same process.",
        "",
        "| task | method | deepinv run | N | PSNR diffinv | PSNR deepinv | paired diff (diffinv - "
        "deepinv) | SSIM diffinv | SSIM deepinv | s/image diffinv | s/image deepinv | time ratio "
        "(deepinv / diffinv) | peak MiB diffinv | peak MiB deepinv | memory ratio (deepinv / diffinv) "
        "| NFE diffinv | NFE deepinv |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (task, meth), libs in sorted(by.items()):
        a = libs.get("diffinv", {})
        for label, b in sorted(libs.items()):
            idx = sorted(set(a) & set(b))
            if label == "diffinv" or not idx:
                continue

            def col(lib: dict, key: str, idx: list[int] = idx) -> list[float]:
                return [lib[i][key] for i in idx]

            diff = [a[i]["psnr"] - b[i]["psnr"] for i in idx]
            ka, kb = (task, meth, "diffinv"), (task, meth, label)
            ratio = f"{mem[kb] / mem[ka]:.2f}" if ka in mem and kb in mem else "-"
            sa, sb = statistics.median(col(a, "seconds")), statistics.median(col(b, "seconds"))
            lines.append(
                f"| {task} | {meth.upper()} | {label} | {len(idx)} | {mean_ci(col(a, 'psnr'))} | "
                f"{mean_ci(col(b, 'psnr'))} | {mean_ci(diff)} | "
                f"{statistics.mean(col(a, 'ssim')):.3f} | {statistics.mean(col(b, 'ssim')):.3f} | "
                f"{sa:.2f} | {sb:.2f} | "
                f"{paired_ratio(col(b, 'seconds'), col(a, 'seconds'))} | "
                f"{mib((task, meth, 'diffinv'))} | {mib((task, meth, label))} | "
                f"{ratio} | "
                f"{statistics.median(col(a, 'nfe')):.0f} | {statistics.median(col(b, 'nfe')):.0f} |")
    lines += [
        "",
        "PSNR/SSIM: mean over the images both libraries finished, with the 95% Student-t "
        "half-width; paired diff: per-image PSNR difference. s/image: medians. Time ratio: geometric "
        "mean of the per-image ratios (the two solves of an image ran back to back) with its 95% "
        "interval. Peak MiB: the most "
        "tensor memory alive at once during the solve on test image 0 (`vs_deepinv.py memory`: "
        "torch.profiler's allocation records replayed, exact on CPU; the measurement and model "
        "made before the call are not counted; - : not measured"
        + "".join(f"; {meth.upper()} from {' and '.join(map(str, sorted(n)))}-step runs "
                  f"(`memory --dps-steps`: the per-step memory does not depend on the count)"
                  for meth, n in sorted(mem_steps.items()))
        + "). NFE: "
        "network forward calls counted by the prior (deepinv's DPS backpropagates through each, "
        "as ours does).",
    ]
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (resumable) and append rows")
    r.add_argument("--n", type=int, default=50, help="test images 0..N-1")
    r.add_argument("--shard", default="0/1", help="I/N: images i with i %% N == I")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--device", default="cpu")
    r.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    r.add_argument("--methods", nargs="+", default=["ddrm", "dps"], choices=["ddrm", "dps"])
    r.add_argument("--dps-n", type=int, default=10, help="DPS on images 0..DPS_N-1 only")
    r.add_argument("--dps-weights", type=float, nargs="+", default=[1.0, 300.0],
                   help="deepinv DPS weights to run (1: its default)")
    w = sub.add_parser("pick-weight", help="deepinv DPS weight on validation images")
    w.add_argument("--images", type=int, default=4)
    w.add_argument("--weights", type=float, nargs="+", default=[1.0, 30.0, 100.0, 300.0])
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("-o", "--output", type=Path)
    mm = sub.add_parser("memory", help="peak tensor memory of each run on one image (CPU)")
    mm.add_argument("--index", type=int, default=0, help="the test image")
    mm.add_argument("--threads", type=int, default=1)
    mm.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    mm.add_argument("--methods", nargs="+", default=["ddrm", "dps"], choices=["ddrm", "dps"])
    mm.add_argument("--dps-weights", type=float, nargs="+", default=[300.0])
    mm.add_argument("--dps-steps", type=int, default=1000,
                    help="DPS steps of the profiled run (its per-step memory does not depend on "
                         "the count; a 1,000-step trace of deepinv's DPS outgrows 24 GiB)")
    mm.set_defaults(device="cpu")
    p = sub.add_parser("report", help="write the Markdown table")
    p.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    {"run": run, "memory": memory, "pick-weight": pick_weight, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
