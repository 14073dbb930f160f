"""``diffinv sample``: unconditional samples from a prior, saved as a PNG grid."""

from __future__ import annotations

import argparse

from diffinv.cli import positive_int

HELP = "draw unconditional samples from a prior (DDPM or DDIM) and save a PNG grid"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help=HELP, description=HELP + ".")
    p.add_argument("--prior", default="fashion32", help="embedded prior name or weights path")
    p.add_argument("-n", type=positive_int, default=64, help="number of samples")
    p.add_argument("-o", "--output", default="samples.png", help="PNG grid to write")
    p.add_argument("--method", choices=["ddpm", "ddim"], default="ddim",
                   help="ddim (default; --eta 0: deterministic) or ddpm ancestral sampling")
    p.add_argument("--steps", type=positive_int, default=100, help="sampler steps (ddpm: respaced)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument(
        "--seed", type=int, default=0, help="run seed; image i uses a seed derived from it"
    )
    p.add_argument("--batch", type=positive_int, default=64, help="images per network call")
    p.add_argument("--tensor", default=None, help="also save the exact samples as safetensors")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="network arithmetic: bf16 = bfloat16 autocast, faster on CPUs with AVX512-BF16 "
                   "(see benchmarks/precision.md), slightly different numbers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from diffinv.checks import check_device, check_output_file
    from diffinv.data.images import make_grid, save_image
    from diffinv.diffusion.zoo import load_prior
    from diffinv.seeding import image_generators

    check_output_file(args.output, (".png",))
    if args.tensor:
        check_output_file(args.tensor)
    check_device(args.device, "--device")
    prior = load_prior(args.prior, device=args.device, precision=args.precision)
    chunks = []
    for start in range(0, args.n, args.batch):
        idx = range(start, min(args.n, start + args.batch))
        chunks.append(
            prior.sample(
                len(idx),
                seed=image_generators(args.seed, idx),
                method=args.method,
                steps=args.steps,
                eta=args.eta,
                progress=True,
            ).cpu()
        )
    x = torch.cat(chunks)
    path = save_image(make_grid(x, ncol=int(max(1, round(args.n**0.5)))), args.output, scale=2)
    print(f"wrote {path} ({args.n} samples, prior {prior.name} sha256 {str(prior.sha256)[:12]})")
    if args.tensor:
        from safetensors.torch import save_file

        save_file({"samples": x.contiguous()}, args.tensor)
        print(f"wrote {args.tensor}")
    return 0
