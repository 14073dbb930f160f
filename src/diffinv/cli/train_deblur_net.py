"""``diffinv train-deblur-net``: train (or resume) the supervised blind-deblurring UNet."""

from __future__ import annotations

import argparse

from diffinv.cli import (
    file_name,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
)

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
    p.add_argument("--steps", type=positive_int, default=8000, help="total optimisation steps")
    p.add_argument("--batch", type=positive_int, default=32, help="batch size")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine",
                   help="cosine (default): down to 10%% of --lr at --steps")
    p.add_argument("--warmup", type=non_negative_int, default=200,
                   help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=fraction, default=0.999,
                   help="decay of the exponential moving average of the weights (what is exported)")
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
    p.add_argument("--ckpt-every", type=positive_int, default=200,
                   help="write the checkpoint every this many steps")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if present)")
    p.add_argument("--max-steps-this-run", type=positive_int, default=None,
                   help="stop after this many steps (checkpointed); rerun to continue")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="a folder: when done, export the EMA weights into it as "
                   "DIR/NAME.safetensors + DIR/NAME.json (with validation PSNR per family)")
    p.add_argument("--name", type=file_name, default=None,
                   help="file name of the export in DIR, without a folder or suffix (default: "
                   "deblur-unet-DATASET)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    import torch

    from diffinv.cli import training_data_set
    from diffinv.learn.checkpoint import check_export
    from diffinv.learn.deblur_trainer import DeblurTrainConfig, export_deblur_net, train_deblur_net

    if args.threads:
        torch.set_num_threads(args.threads)
    name = training_data_set(args.dataset)
    export_name = args.name or f"deblur-unet-{name}"
    if args.export:
        check_export(args.export, export_name)
    cfg = DeblurTrainConfig(
        dataset=name, out=args.out, steps=args.steps, batch=args.batch, lr=args.lr,
        lr_schedule=args.lr_schedule, warmup=args.warmup, ema_decay=args.ema_decay,
        sigma_max=args.sigma_max, seed=args.seed, precision=args.precision,
        ckpt_every=args.ckpt_every,
        net=dict(base=args.base, mults=args.mults, blocks=args.blocks))
    ckpt = train_deblur_net(cfg, device=args.device, progress=not args.no_progress,
                            max_steps_this_run=args.max_steps_this_run)
    print(f"checkpoint: {ckpt}")
    if args.export:
        command = "diffinv " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        path = export_deblur_net(ckpt, args.export, export_name, extra={"command": command})
        print(f"exported: {path}")
    return 0
