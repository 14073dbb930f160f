"""Non-diffusion blind baselines on fashion32 *valid* images: PSNR, kernel MSE, seconds per image.

    PYTHONPATH=src nice -n 10 python benchmarks/tools/blind_classical.py \
        --methods pan-l0 supervised-unet selfdeblur --n 8 --n-selfdeblur 4 \
        -o benchmarks/blind_classical

For each blind family (blind-motion-blur, blind-gaussian-blur, blind-rotation-blur,
blind-zoom-blur) the first ``--n`` images of the fashion32 *valid* split are measured with
:func:`diffinv.physics.measure` (seed 0, Gaussian noise sigma 0.02 in [-1, 1] units: image ``i``'s
hidden parameters and noise come from ``image_seed(0, i)``); every method solves each image alone
(seed 0, image index ``i``) with its defaults, on one CPU thread. Per image: PSNR of the estimate
and of ``y``, for the kernel methods on the kernel families the centred kernel MSE
(:func:`diffinv.metrics.kernels.kernel_mse`, the metric of the tables) and that of a delta
kernel (the "no blur" reference), and the solver's wall time. Rows go to ``OUT.jsonl`` (a rerun
skips the rows already there: resumable); ``OUT.md`` is the summary table (means over images).
The methods ignore the diffusion prior; the fashion32 prior is passed to honour the solver
contract.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

FAMILIES = ("blind-motion-blur", "blind-gaussian-blur", "blind-rotation-blur", "blind-zoom-blur")


def true_kernel(m) -> torch.Tensor | None:
    """The hidden kernel of a kernel family (evaluation only), else None."""
    from diffinv.physics.kernels import gaussian_kernel

    if "kernel" in m.true_params:
        return m.true_params["kernel"]
    if "std" in m.true_params:
        return gaussian_kernel(int(m.config["size"]), m.true_params["std"])
    return None


def run(args: argparse.Namespace) -> int:
    from diffinv.data import load_split
    from diffinv.diffusion import load_prior
    from diffinv.metrics import psnr
    from diffinv.metrics.kernels import kernel_mse
    from diffinv.physics.measurement import measure
    from diffinv.seeding import image_generators
    from diffinv.solvers import make_solver

    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path = out.with_suffix(".jsonl")
    done = set()
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["family"], r["index"]))
    x_all = load_split("fashion32", "valid").images
    prior = load_prior("fashion32")
    for method in args.methods:
        n = args.n_selfdeblur if method == "selfdeblur" else args.n
        solver = make_solver(method)
        for fam in args.families:
            x = x_all[:n]
            m = measure(x, fam, args.noise, args.seed, indices=list(range(n)))
            kt = true_kernel(m)
            public = m.public()
            for i in range(n):
                if (method, fam, i) in done:
                    continue
                t0 = time.perf_counter()
                r = solver(m.y[i:i + 1], public, prior, seed=image_generators(args.seed, [i]))
                secs = time.perf_counter() - t0
                row = {"method": method, "family": fam, "index": i, "split": "fashion32:valid",
                       "command": command,
                       "seed": args.seed, "noise": args.noise,
                       "psnr": float(psnr(r.x, x[i:i + 1])[0]),
                       "psnr_y": float(psnr(m.y[i:i + 1], x[i:i + 1])[0]), "seconds": secs}
                if "kernel" in r.trace and kt is not None:
                    k = kt[i:i + 1]
                    d = torch.zeros_like(k)
                    d[:, k.shape[-2] // 2, k.shape[-1] // 2] = 1
                    row["kernel_mse"] = float(kernel_mse(r.trace["kernel"], k)[0])
                    row["kernel_mse_delta"] = float(kernel_mse(d, k)[0])
                    row["kernel_metric"] = "diffinv.metrics.kernels.kernel_mse"
                with open(rows_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    write_table(rows_path, out.with_suffix(".md"))
    return 0


def _fmt(v: list[float], spec: str) -> str:
    return format(statistics.mean(v), spec) if v else "n/a"


def write_table(rows_path: Path, md: Path) -> None:
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    commands = list(dict.fromkeys(r.get("command", "?") for r in rows))
    lines = [
        "# Non-diffusion blind baselines on fashion32 valid",
        "",
        "Commands (the rows were made by these runs, resumable, in this order): "
        + "; ".join(f"`{c}`" for c in commands) + f". Rows in `{rows_path.name}`. Machine: "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread, "
        "a 2-core CPU shared with other jobs (seconds are indicative). Images: the first N of the "
        "fashion32 *valid* split, seed 0, Gaussian noise sigma 0.02 ([-1, 1] units); means over "
        "images. Kernel MSE after centring: rows made before 2026-12-05 used the best whole-pixel "
        "shift and a mean over the kernel's 81 entries; rows with `kernel_metric` use "
        "diffinv.metrics.kernels.kernel_mse (centre of mass, mean over a 13x13 canvas, the "
        "metric of blind_linear.md), so compare kernel MSEs only within this table; "
        "`delta` is the MSE of a "
        "delta kernel (no blur) for reference. On rotation and zoom blur the kernel methods fit "
        "their convolution model (9x9 kernel, circular), as CL-DPS ran its kernel baselines; "
        "those families have no true kernel. supervised-unet: a supervised UNet trained here "
        "(stands for DeblurGANv2/MPRNet/Stripformer), no kernel.",
        "",
        "| method | family | N | PSNR (dB) | PSNR of y | kernel MSE | delta kernel MSE | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["method"], r["family"]) for r in rows},
                  key=lambda t: (t[0], FAMILIES.index(t[1]) if t[1] in FAMILIES else 9))
    for method, fam in keys:
        rs = [r for r in rows if r["method"] == method and r["family"] == fam]
        km = [r["kernel_mse"] for r in rs if "kernel_mse" in r]
        kd = [r["kernel_mse_delta"] for r in rs if "kernel_mse_delta" in r]
        lines.append(
            f"| {method} | {fam} | {len(rs)} | {_fmt([r['psnr'] for r in rs], '.2f')} | "
            f"{_fmt([r['psnr_y'] for r in rs], '.2f')} | {_fmt(km, '.2e')} | {_fmt(kd, '.2e')} | "
            f"{_fmt([r['seconds'] for r in rs], '.2f')} |")
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["pan-l0", "supervised-unet", "selfdeblur"])
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--n", type=int, default=8, help="images per family")
    p.add_argument("--n-selfdeblur", type=int, default=4,
                   help="images per family for SelfDeblur (about 100 s per image here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", default="gaussian:0.02")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--out", default="benchmarks/blind_classical",
                   help="output stem: OUT.jsonl (rows) and OUT.md (table)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
