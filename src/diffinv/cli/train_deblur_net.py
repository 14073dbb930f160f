"""``diffinv train-deblur-net``: train (or resume) the supervised blind-deblurring UNet."""

from __future__ import annotations

import argparse

from diffinv.cli import file_name, fraction, positive_int, positive_int_list
from diffinv.cli._trainer_args import add_run_options, add_schedule_options

HELP = ("train or resume the supervised blind-deblurring UNet (solver supervised-unet) on "
        "blind-blurred + noisy pairs of a train split")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-deblur-net", help=HELP,
        description=HELP + ". Each sample gets one of the four blind families (random "
        "parameters from the family's own law) and Gaussian noise sigma ~ U(0, --sigma-max); "
        "loss L1. A run whose --out folder holds a checkpoint resumes where it stopped.")
    p.add_argument("--dataset", default="fashion32", help="mnist32 or fashion32 (train split)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    add_schedule_options(p, steps=8000, batch=32, lr=1e-3)
    p.add_argument("--sigma-max", type=fraction, default=0.05,
                   help="noise std drawn in [0, sigma_max] per sample ([-1, 1] units, < 1)")
    p.add_argument("--base", type=positive_int, default=32, help="channels of the first level")
    p.add_argument("--mults", type=positive_int_list, default=[1, 2, 4],
                   help="comma-separated channel multipliers, one per level")
    p.add_argument("--blocks", type=positive_int, default=2, help="residual blocks per level")
    p.add_argument("--seed", type=int, default=0,
                   help="run seed: the initial weights and the draws of every step derive from it")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: bfloat16 autocast of the forward pass")
    add_run_options(p, ckpt_every=200, export_help="a folder: when done, export the EMA weights "
                    "into it as DIR/NAME.safetensors + DIR/NAME.json (with validation PSNR per "
                    "family)")
    p.add_argument("--name", type=file_name, default=None,
                   help="file name of the export in DIR, without a folder or suffix (default: "
                   "deblur-unet-DATASET)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from diffinv.cli._trainer_args import schedule_config, start_run, train_and_export
    from diffinv.learn.deblur_trainer import DeblurTrainConfig, export_deblur_net, train_deblur_net

    name, export_name = start_run(args, lambda name: args.name or f"deblur-unet-{name}")
    cfg = DeblurTrainConfig(
        dataset=name, out=args.out, **schedule_config(args), sigma_max=args.sigma_max,
        seed=args.seed, precision=args.precision,
        net=dict(base=args.base, mults=args.mults, blocks=args.blocks))

    def export(ckpt: Path) -> Path:
        command = "diffinv " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        return export_deblur_net(ckpt, args.export, export_name, extra={"command": command})

    return train_and_export(args, train_deblur_net, cfg, export)
