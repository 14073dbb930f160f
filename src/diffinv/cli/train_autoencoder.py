"""``diffinv train-autoencoder``: train (or resume) the KL autoencoder of a latent prior."""

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

HELP = ("train or resume the KL autoencoder (first stage of a latent prior: 32x32 -> 8x8x4 by "
        "default) on a train split; then `diffinv train-prior --latent AE.safetensors`")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-autoencoder", help=HELP,
        description=HELP + ". Loss: L1 (or MSE) reconstruction of the posterior sample + "
        "kl_weight x KL. A run whose --out folder holds a checkpoint resumes where it stopped.")
    p.add_argument("--dataset", default="fashion32", help="mnist32 or fashion32 (train split)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    p.add_argument("--steps", type=positive_int, default=20_000, help="total optimisation steps")
    p.add_argument("--batch", type=positive_int, default=64, help="batch size")
    p.add_argument("--lr", type=positive_float, default=4.5e-4, help="AdamW learning rate")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine",
                   help="cosine (default): down to 10%% of --lr at --steps")
    p.add_argument("--warmup", type=non_negative_int, default=200,
                   help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=fraction, default=0.999,
                   help="decay of the exponential moving average of the weights (exported)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term")
    p.add_argument("--recon", choices=["l1", "mse"], default="l1", help="reconstruction loss")
    p.add_argument("--latent-channels", type=positive_int, default=4, help="latent channels")
    p.add_argument("--base", type=positive_int, default=32, help="channels of the first level")
    p.add_argument("--mults", type=positive_int_list, default=[1, 2, 2],
                   help="comma-separated channel multipliers; len - 1 downsamplings (1,2,2: f=4)")
    p.add_argument("--blocks", type=positive_int, default=1, help="residual blocks per level")
    p.add_argument("--train-images", type=non_negative_int, default=0,
                   help="train on the first N images only (0: all)")
    p.add_argument("--seed", type=int, default=0, help="run seed (weights, every step's draws)")
    p.add_argument("--ckpt-every", type=positive_int, default=250,
                   help="write the checkpoint every this many steps")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if present)")
    p.add_argument("--max-steps-this-run", type=positive_int, default=None,
                   help="stop after this many steps (checkpointed); rerun to continue")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="a folder: when done, export the EMA weights as DIR/NAME.safetensors + "
                   "DIR/NAME.json (with the latent scale_factor)")
    p.add_argument("--name", type=file_name, default=None,
                   help="export file name without folder or suffix (default: ae-DATASET)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from diffinv.cli import training_data_set
    from diffinv.latent.training import AutoencoderConfig, export_autoencoder, train_autoencoder
    from diffinv.learn.checkpoint import check_export

    if args.threads:
        torch.set_num_threads(args.threads)
    name = training_data_set(args.dataset)
    export_name = args.name or f"ae-{name}"
    if args.export:
        check_export(args.export, export_name)
    cfg = AutoencoderConfig(
        dataset=name, out=args.out, steps=args.steps, batch=args.batch, lr=args.lr,
        lr_schedule=args.lr_schedule, warmup=args.warmup, ema_decay=args.ema_decay,
        kl_weight=args.kl_weight, recon=args.recon, train_images=args.train_images,
        seed=args.seed, ckpt_every=args.ckpt_every,
        autoencoder=dict(latent_channels=args.latent_channels, base_channels=args.base,
                         channel_mults=args.mults, blocks=args.blocks))
    ckpt = train_autoencoder(cfg, device=args.device, progress=not args.no_progress,
                             max_steps_this_run=args.max_steps_this_run)
    print(f"checkpoint: {ckpt}")
    if args.export:
        print(f"exported: {export_autoencoder(ckpt, args.export, export_name)}")
    return 0
