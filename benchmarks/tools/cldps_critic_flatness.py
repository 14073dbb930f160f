"""How flat is CL-DPS's learned critic around the truth? (issue 37 diagnostic)

For each encoder and blind family, on fashion32 *validation* images 0..N-1 (measurement seed 1,
sigma 0.02, as ``benchmarks/tasks/cldps_ablation.toml``), this tool reports the patch-averaged
critic ``s(y, u) = (1/P) sum_p <f_q(y_p), f_k(u_p)>`` (the similarity CL-DPS's energy is minus
``1/tau`` times) at:

* ``truth``: the clean image x;
* ``y``: the measurement itself (``x_beats_y`` asks whether truth > y);
* ``mix10``: ``0.9 x + 0.1 x'`` with x' the validation image 100 + i (a 29.6 dB image on average);
* ``other``: other validation images (the mean over 8 of them);
* ``output``: CL-DPS's restoration (DDIM 100, the scale, energy and intensity weight given; solver
  seed 0),

beside the PSNR of the output, of y and of ``mix10``. An output whose critic reaches the truth's
at a far lower PSNR means the surrogate cannot tell them apart: guidance has nothing left to
climb. Writes ``benchmarks/cldps_critic_flatness.md`` (or ``-o``)::

    python benchmarks/tools/cldps_critic_flatness.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

ENCODERS = {  # label -> (encoder, energy, scale)
    "shipped (whole image, momentum)": (None, "projection", 0.1),
    "patches, momentum + predictor, spatial": (
        "training/state/cldps-ablation/crop16-momentum-predictor.safetensors", "spatial", 0.3),
    "patches, trained key tower": (
        "training/state/cldps-ablation/crop16-keytower-1000.safetensors", "projection", 0.3),
    "patches, trained key tower + mix": (
        "training/state/cldps-ablation/crop16-keytower-mix-1500.safetensors", "projection", 0.3),
}
FAMILIES = ("blind-rotation-blur", "blind-zoom-blur")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/cldps_critic_flatness.md"))
    args = ap.parse_args(argv)
    import torch

    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.guidance.contrastive import ContrastiveEnergy, load_likelihood
    from diffinv.metrics.psnr import psnr
    from diffinv.physics import make_operator, measure
    from diffinv.solvers import make_solver

    if args.threads:
        torch.set_num_threads(args.threads)
    prior = load_prior("fashion32")
    valid = load_split("fashion32", "valid").images
    n = args.images
    x, mixin, others = valid[:n], valid[100:100 + n], valid[200:208]
    mix = 0.9 * x + 0.1 * mixin
    rows = []
    t0 = time.time()
    for label, (enc, energy, scale) in ENCODERS.items():
        q, k, _ = load_likelihood(enc, prior)
        for fam in FAMILIES:
            m = measure(x, make_operator(fam), "gaussian:0.02", seed=1)
            crit = ContrastiveEnergy(m.y, q, k, 0.07, 8, kind=energy)
            solver = make_solver("cl-dps", sampler="ddim", steps=100, scale=scale,
                                 intensity_weight=30.0, energy=energy, encoder=enc)
            out = solver(m.y, m.public(), prior, seed=0).x
            with torch.no_grad():
                s = {name: float(crit.similarity(u).mean()) for name, u in
                     (("truth", x), ("y", m.y), ("mix10", mix), ("output", out))}
                s["other"] = float(torch.stack([crit.similarity(o.expand_as(x))
                                                for o in others[:, None]]).mean())
            rows.append((label, fam, energy, scale, s, *(float(psnr(u, x).mean())
                                                          for u in (out, m.y, mix))))
            print(label, fam, s, file=sys.stderr)
    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = ["# CL-DPS critic around the truth (fashion32 validation images)", "",
             f"- Made by: `{cmd}`",
             f"- Machine: {platform.processor() or platform.machine()}, torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"{time.time() - t0:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- Validation images 0..{n - 1}, sigma 0.02, measurement seed 1, solver seed 0; "
             "DDIM 100, intensity weight 30; critic = patch-averaged similarity s(y, u) (energy "
             "kind as in the row); mix10 = 0.9 x + 0.1 x' (x' = validation image 100 + i); other "
             "= mean over validation images 200..207. Means over the images.", "",
             "| encoder | family | energy | s | critic: truth | y | mix10 | output | other "
             "| PSNR output | PSNR y | PSNR mix10 |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for label, fam, energy, scale, s, po, py, pm in rows:
        lines.append(f"| {label} | {fam} | {energy} | {scale:g} | {s['truth']:.3f} | "
                     f"{s['y']:.3f} | {s['mix10']:.3f} | {s['output']:.3f} | {s['other']:.3f} | "
                     f"{po:.2f} | {py:.2f} | {pm:.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
