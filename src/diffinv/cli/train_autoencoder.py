"""``diffinv train-autoencoder``: train (or resume) the KL autoencoder of a latent prior."""

from __future__ import annotations

import argparse

from diffinv.cli import file_name, non_negative_int, positive_int, positive_int_list
from diffinv.cli._trainer_args import add_run_options, add_schedule_options

HELP = ("train or resume the KL autoencoder (first stage of a latent prior: 32x32 -> 8x8x4 by "
        "default) on a train split; then `diffinv train-prior --latent AE.safetensors`")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-autoencoder", help=HELP,
        description=HELP + ". Loss: L1 (or MSE) reconstruction of the posterior sample + "
        "kl_weight x KL. A run whose --out folder holds a checkpoint resumes where it stopped.")
    p.add_argument("--dataset", default="fashion32", help="mnist32 or fashion32 (train split)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    add_schedule_options(
        p, steps=20_000, batch=64, lr=4.5e-4,
        ema_help="decay of the exponential moving average of the weights (exported)")
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
    add_run_options(p, ckpt_every=250, export_help="a folder: when done, export the EMA weights "
                    "as DIR/NAME.safetensors + DIR/NAME.json (with the latent scale_factor)")
    p.add_argument("--name", type=file_name, default=None,
                   help="export file name without folder or suffix (default: ae-DATASET)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffinv.cli._trainer_args import schedule_config, start_run, train_and_export
    from diffinv.latent.training import AutoencoderConfig, export_autoencoder, train_autoencoder

    name, export_name = start_run(args, lambda name: args.name or f"ae-{name}")
    cfg = AutoencoderConfig(
        dataset=name, out=args.out, **schedule_config(args), kl_weight=args.kl_weight,
        recon=args.recon, train_images=args.train_images, seed=args.seed,
        autoencoder=dict(latent_channels=args.latent_channels, base_channels=args.base,
                         channel_mults=args.mults, blocks=args.blocks))
    return train_and_export(args, train_autoencoder, cfg,
                            lambda ckpt: export_autoencoder(ckpt, args.export, export_name))
