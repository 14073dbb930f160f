"""Structure and cost check at 3x256x256 with a RANDOMLY INITIALISED ADM-FFHQ network (issue 25).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tools/rgb256_cost.py --threads 1 \
        -o benchmarks/rgb256_cost.md            # add --device cuda on a GPU

Not a quality benchmark: the network is the ``adm-ffhq256`` preset (the layout of ffhq_10m.pt,
the prior of DPS / DMPlug / BlindDPS) with random weights (seed 0; the layers ADM initialises to
zero get N(0, 1e-3^2) so that every output is non-trivial), because no 256x256 weights may be
downloaded here. It shows that every operator and the solvers run on 3-channel 256x256 images,
and what one step costs:

1. Operators: scikit-image's astronaut, chelsea and coffee (centre-cropped, resized to 256x256,
   [-1, 1]) measured by every registered operator (``bkse-blur`` needs its weights file: skipped)
   with sigma = 0.05 (``blur`` with a 31x31 Gaussian kernel of std 3 px); for linear ones the
   adjoint identity ``<A x, y> = <x, A^T y>`` (relative error) and, with an SVD,
   ``U diag(s) V^T x = A x``.
2. Solvers on the astronaut (batch 1), a few steps each (``--steps``): DPS, DDRM, DMPlug (with and
   without gradient checkpointing), and PiGDM, DiffPIR, DAPS and RED-diff; seconds per network
   step (solver seconds / NFE, DMPlug: per iteration of S = 3 DDIM steps) and peak memory
   (benchmarks/tools/peak_memory.py). Trajectories are not stored (no solver keeps them unless
   asked).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path
from typing import Any

from peak_memory import timed

IMAGES = ("astronaut", "chelsea", "coffee")


def natural_images(size: int) -> Any:
    """scikit-image's colour test images, centre-cropped square, resized, in [-1, 1]."""
    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    out = []
    for name in IMAGES:
        a = getattr(skimage.data, name)()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = Image.fromarray(a).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out)


def random_adm_prior(preset: str, device: str) -> Any:
    import torch

    from diffinv.diffusion import DiffusionPrior
    from diffinv.diffusion.adm import ADMUNet
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.zoo import adm_config

    meta = adm_config(preset)
    torch.manual_seed(0)
    net = ADMUNet(**meta["adm"])
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 1e-3)
    net.eval().requires_grad_(False).to(device)
    return DiffusionPrior(net, VPSchedule.from_name(meta["schedule"], int(meta["T"])),
                          image_shape=meta["image_shape"], variance=meta["variance"],
                          name=f"{preset} (random weights)")


def check_operators(x: Any) -> list[str]:
    import torch

    from diffinv.physics import OPERATORS, gaussian_kernel, make_operator, measure

    rows = []
    for name in sorted(OPERATORS):
        if name == "bkse-blur":
            rows.append(f"| {name} | skipped: needs the GOPRO_wVAE.pth weights file | | | |")
            continue
        kw = {"kernel": gaussian_kernel(31, 3.0)} if name == "blur" else {}
        op = make_operator(name, **kw)
        m, sec, mem = timed(lambda op=op: measure(x, op, "gaussian:0.05", 0))
        adj = svd_err = ""
        if op.linear:
            params = {**m.params, **m.true_params}
            g = torch.Generator().manual_seed(1)
            v = torch.randn(m.y.shape, generator=g)
            lhs = float((op(x, **params) * v).sum())
            rhs = float((x * op.adjoint(v, **params)).sum())
            adj = f"{abs(lhs - rhs) / max(abs(lhs), 1e-12):.1e}"
            if op.has_svd:
                svd = op.svd(x.shape, **params)
                ax = op(x, **params)
                svd_err = f"{float((svd.forward(x) - ax).norm() / ax.norm()):.1e}"
        rows.append(f"| {name} | {tuple(m.y.shape)} | {sec:.2f} | {adj} | {svd_err} |")
    return rows


SOLVERS: list[tuple[str, str, dict[str, Any], str]] = [
    # label, solver, parameters (``{k}``: the step count), operator
    ("DPS", "dps", {"steps": "{k}"}, "gaussian-blur"),
    ("DDRM", "ddrm", {"steps": "{k}"}, "sr-avgpool"),
    ("PiGDM", "pigdm", {"steps": "{k}"}, "inpaint-box"),
    ("DiffPIR", "diffpir", {"steps": "{k}"}, "gaussian-blur"),
    ("DAPS", "daps", {"annealing_steps": "{k}", "ode_steps": 1, "mcmc_steps": 10}, "motion-blur"),
    ("RED-diff", "red-diff", {"steps": "{k}"}, "inpaint-random"),
    ("DMPlug", "dmplug", {"iterations": "{k}"}, "gaussian-blur"),
    ("DMPlug, checkpointing", "dmplug", {"iterations": "{k}", "checkpoint": True},
     "gaussian-blur"),
]


def run_solvers(x: Any, prior: Any, steps: int, device: str) -> list[str]:
    from diffinv.physics import make_operator, measure
    from diffinv.solvers import make_solver

    rows = []
    for label, name, params, op_name in SOLVERS:
        kw = {k: (steps if v == "{k}" else v) for k, v in params.items()}
        op = make_operator(op_name).to(device)
        m = measure(x, op, "gaussian:0.05", 0)
        solver = make_solver(name, **kw)
        res, sec, mem = timed(lambda s=solver, m=m: s(m.y, m.public(), prior, seed=0), device)
        per = sec / steps if name == "dmplug" else sec / max(res.nfe, 1)
        unit = "iteration (3 DDIM steps)" if name == "dmplug" else "network call"
        ok = bool(res.x.shape == x.shape and res.x.isfinite().all())
        rows.append(f"| {label} | {op_name} | {kw} | {res.nfe} | {sec:.1f} | {per:.2f} s per "
                    f"{unit} | {mem:.0f} | {'yes' if ok else 'NO'} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="adm-ffhq256", help="ADM preset (random weights)")
    ap.add_argument("--steps", type=int, default=3, help="steps / iterations per solver")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-operators", action="store_true")
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = random_adm_prior(args.preset, args.device)
    size = prior.image_shape[-1]
    x3 = natural_images(size)
    n_params = sum(p.numel() for p in prior.network.parameters())
    lines = [
        f"# 3x{size}x{size} structure and cost check ({args.preset}, RANDOM weights: not a "
        "quality result)", "",
        f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python {' '.join(sys.argv)}`", "",
        f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
        f"device {args.device}, {args.threads} thread(s); network {n_params / 1e6:.1f} M "
        f"parameters ({math.prod(prior.image_shape)} pixels per image). Images: scikit-image "
        f"{', '.join(IMAGES)} (operators), astronaut (solvers), sigma = 0.05.", "",
    ]
    if not args.skip_operators:
        lines += ["## Every operator on 3 RGB images", "",
                  "| operator | y shape | s (measure, 3 images) | adjoint rel. error | "
                  "SVD rel. error |", "|---|---|--:|--:|--:|"]
        lines += check_operators(x3.to(args.device))
        lines.append("")
    lines += ["## Solvers, a few steps each on one image", "",
              "| solver | operator | parameters | NFE | s | per step | peak MiB | finite "
              "output of the right shape |", "|---|---|---|--:|--:|--:|--:|---|"]
    lines += run_solvers(x3[:1].to(args.device), prior, args.steps, args.device)
    lines += ["", "Peak MiB: growth of the resident set during the call on CPU (sampled every "
              "2 ms), of the CUDA allocation on a GPU (benchmarks/tools/peak_memory.py)."]
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
