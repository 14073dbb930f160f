"""``diffinv demo``: the main job on the embedded default prior, with no data set installed.

Until the solvers land it samples a grid from the embedded ``fashion32`` prior and shows it beside
the bundled held-out test images (real images | samples).
"""

from __future__ import annotations

import argparse

HELP = "run the main job on the embedded prior and write a PNG (no data set needed)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP + ".")
    p.add_argument("-o", "--output", default="out/demo", help="output folder")
    p.add_argument("--prior", default="fashion32")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from diffinv.data import demo_images, save_panel
    from diffinv.diffusion.zoo import load_prior

    t0 = time.time()
    prior = load_prior(args.prior)
    real, _ = demo_images(prior.domain)
    samples = prior.sample(
        len(real), seed=args.seed, method="ddim", steps=args.steps, progress=True
    )
    out = Path(args.output)
    path = save_panel([real, samples], out / "demo.png")
    print(
        f"prior {prior.name} (sha256 {str(prior.sha256)[:12]}): {len(real)} DDIM-{args.steps} samples "
        f"in {time.time() - t0:.1f}s"
    )
    print(f"wrote {path.resolve()}  (left: held-out test images, right: samples)")
    return 0
