"""``diffinv demo``: the main job on the embedded default prior, with no data set installed.

Four held-out test images bundled in the package are blurred (Gaussian, 9x9, std 1.5 px) and
noised (Gaussian, sigma 0.05 in [-1, 1] units) with a fixed seed, then restored with DPS
(1000 ancestral steps) and the embedded ``fashion32`` prior. Writes ``demo.png`` (truth |
measurement | DPS result, one row per image) and ``metrics.json`` (PSNR/SSIM of y and of the
result per image), and prints where they are.
"""

from __future__ import annotations

import argparse

from diffinv.cli import noise_help

HELP = "restore 4 bundled test images from a blurred, noisy measurement with DPS (no data set needed)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP + ". DPS runs 1000 network calls: "
                       "about a minute on a CPU (--solver ddrm: seconds). Writes demo.png "
                       "(truth | measurement | result) and metrics.json into the output folder.")
    p.add_argument("-o", "--output", default="out/demo", help="output folder (default "
                   "out/demo), written whole when the demo succeeds")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that an earlier demo wrote (never a folder "
                   "holding other files, nor the working folder)")
    p.add_argument("--prior", default="fashion32", help="embedded prior name or weights path")
    p.add_argument("--solver", default="dps", help="solver name (see `diffinv solve --help`)")
    p.add_argument("--operator", default="gaussian-blur",
                   help="forward operator (default gaussian-blur; see `diffinv measure --list`)")
    p.add_argument("--noise", default="gaussian:0.05", help=noise_help("gaussian:0.05"))
    p.add_argument("-n", type=int, default=4, help="how many bundled images (at most 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the measurement noise and of the solver")
    p.set_defaults(func=run)


def check_demo_prior(prior) -> None:
    """Refuse a prior that is not an image prior of a domain with bundled demo images (e.g. the
    ``kernels9`` blur-kernel prior), before anything runs."""
    from diffinv.data.datasets import canonical_name
    from diffinv.data.demo import demo_domains
    from diffinv.errors import DiffinvError

    domains = demo_domains()
    try:
        domain = canonical_name(str(prior.domain))
    except DiffinvError:
        domain = None
    if domain in domains and tuple(prior.image_shape) == (1, 32, 32):
        return
    what = ("a prior of blur kernels" if str(prior.domain).startswith("kernels")
            else f"a prior of domain {prior.domain!r}")
    raise DiffinvError(f"prior {prior.name!r} is {what} ({'x'.join(map(str, prior.image_shape))}), "
                       f"not an image prior of a domain with bundled demo images "
                       f"({', '.join(domains)}): the demo needs an image prior such as "
                       f"{' or '.join(domains)}; use `diffinv measure` and `diffinv solve` for "
                       "your own images")


def run(args: argparse.Namespace) -> int:
    import json

    from diffinv.checks import check_output_folder
    from diffinv.data import demo_images, save_panel
    from diffinv.diffusion.zoo import load_prior
    from diffinv.errors import DiffinvError
    from diffinv.fileio import atomic_folder
    from diffinv.metrics import get_metric
    from diffinv.physics import make_operator, measure
    from diffinv.solvers import make_solver
    from diffinv.solvers.presets import auto_preset

    out = check_output_folder(args.output, overwrite=args.overwrite)
    prior = load_prior(args.prior)
    check_demo_prior(prior)
    images, indices = demo_images(prior.domain)
    if not 1 <= args.n <= len(images):
        raise DiffinvError(f"-n must lie in 1..{len(images)}")
    x, indices = images[: args.n], indices[: args.n]
    m = measure(x, make_operator(args.operator), args.noise, args.seed, indices)
    preset = auto_preset(args.prior)
    solver = make_solver(args.solver, preset=preset, operator=args.operator)
    solver.progress = True
    result = solver(m.y, m.public(), prior, seed=args.seed)
    psnr, ssim = get_metric("psnr"), get_metric("ssim")
    y_img = m.y if m.y.shape == x.shape else None
    report = {
        "prior": prior.name, "prior_sha256": prior.sha256, "solver": args.solver, "preset": preset,
        "operator": args.operator, "noise": args.noise, "seed": args.seed,
        "test_indices": indices, "nfe": result.nfe, "seconds": round(result.seconds, 2),
        "psnr": [round(v, 3) for v in psnr(result.x, x).tolist()],
        "ssim": [round(v, 4) for v in ssim(result.x, x).tolist()],
    }
    if y_img is not None:
        report["psnr_of_y"] = [round(v, 3) for v in psnr(y_img, x).tolist()]
    with atomic_folder(out, overwrite=args.overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        save_panel([x, m.y, result.x], tmp / "demo.png")
    panel = out / "demo.png"
    mean = sum(report["psnr"]) / len(report["psnr"])
    print(f"{args.solver} with prior {prior.name} (sha256 {str(prior.sha256)[:12]}) on "
          f"{args.operator} + {args.noise}: mean PSNR {mean:.2f} dB, "
          f"SSIM {sum(report['ssim']) / len(report['ssim']):.3f}, {result.nfe} NFE, {result.seconds:.1f}s")
    print(f"wrote {panel.resolve()}  (rows: test images; columns: truth | measurement | result)")
    print(f"wrote {(out / 'metrics.json').resolve()}")
    return 0
