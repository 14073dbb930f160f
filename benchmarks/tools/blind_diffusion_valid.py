"""PSNR, kernel MSE and s/image of a blind diffusion solver on fashion32 *validation* images.

Used to choose the step scales of BlindDPS, GibbsDDRM and FastEM (never on test images) and to
report their first numbers. For each family, images 0..N-1 of the fashion32 valid split are
measured with seed ``--seed`` (their hidden kernels and noise, as ``diffinv.physics.measure``
draws them) at Gaussian sigma ``--sigma`` in [-1, 1] units, solved in one batch with solver seed 0,
and compared with the truth: PSNR on the [0, 1] frame, kernel MSE (mean over the 9x9 entries of
``(k_hat - k)^2``; a delta kernel scores ~1e-2, see the "delta" line). One JSON line per
(solver, parameters, family) is appended to ``--out``.

    PYTHONPATH=src python benchmarks/tools/blind_diffusion_valid.py blind-dps \
        --params '{"kernel_scale": 0.3}' --out runs/blind_valid.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffinv.bench.machine import describe_machine, machine_info
from diffinv.data import load_split
from diffinv.diffusion.zoo import load_prior
from diffinv.metrics.psnr import psnr
from diffinv.physics import gaussian_kernel, measure
from diffinv.solvers import make_solver
from diffinv.solvers._blind import delta_kernel

FAMILIES = ("blind-motion-blur", "blind-gaussian-blur")


def true_kernels(m) -> torch.Tensor:
    if "std" in m.true_params:
        return gaussian_kernel(m.config["size"], m.true_params["std"])
    return m.true_params["kernel"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("solver")
    p.add_argument("--params", default="{}", help="solver parameters as JSON")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    params = json.loads(a.params)
    prior = load_prior("fashion32")
    x = load_split("fashion32", "valid").images[: a.n]
    solver = make_solver(a.solver, **params)
    machine = describe_machine(machine_info("cpu"))
    for fam in a.families.split(","):
        m = measure(x, fam, f"gaussian:{a.sigma}", seed=a.seed, indices=list(range(a.n)))
        t0 = time.perf_counter()
        r = solver(m.y, m.public(), prior, seed=0)
        sec = time.perf_counter() - t0
        kt = true_kernels(m)
        kmse = (r.trace["kernel"] - kt).square().mean((1, 2))
        delta = (delta_kernel(a.n, kt.shape[-1]) - kt).square().mean((1, 2))
        ps = psnr(r.x, x)
        row = {"solver": a.solver, "params": params, "family": fam, "n": a.n, "seed": a.seed,
               "sigma": a.sigma, "split": "fashion32:valid", "psnr": ps.tolist(),
               "psnr_mean": ps.mean().item(), "kernel_mse": kmse.tolist(),
               "kernel_mse_mean": kmse.mean().item(), "delta_kernel_mse_mean": delta.mean().item(),
               "s_per_image": sec / a.n, "nfe": r.nfe, "machine": machine,
               "psnr_y_mean": psnr(m.y, x).mean().item()}
        print(f"{a.solver} {params} {fam}: PSNR {row['psnr_mean']:.2f} dB, kernel MSE "
              f"{row['kernel_mse_mean']:.2e} (delta {row['delta_kernel_mse_mean']:.2e}), "
              f"{row['s_per_image']:.1f} s/image (y: {row['psnr_y_mean']:.2f} dB)", flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
