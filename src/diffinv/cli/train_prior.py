"""``diffinv train-prior``: train (or resume) a diffusion prior on a data set."""

from __future__ import annotations

import argparse

from diffinv.cli import (
    fraction,
    int_list,
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
)

HELP = ("train or resume a UNet prior: eps-prediction diffusion or (--objective flow) flow "
        "matching (EMA, checkpoints, torchrun DDP)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior",
        help=HELP,
        description=HELP + ". A run whose --out folder "
        "holds a checkpoint resumes where it stopped. Launch with `torchrun "
        "--nproc_per_node N -m diffinv.cli train-prior ...` for data parallelism.",
    )
    p.add_argument("--dataset", default="fashion32", help="mnist32, fashion32 or kernels9 (train split)")
    p.add_argument(
        "--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl, config.json)"
    )
    p.add_argument("--steps", type=positive_int, default=10_000, help="total optimisation steps")
    p.add_argument("--batch", type=positive_int, default=64, help="global batch size")
    p.add_argument("--lr", type=positive_float, default=6e-4, help="AdamW learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="cosine: down to 10%% of --lr at --steps, starting at --decay-start",
    )
    p.add_argument(
        "--decay-start",
        type=non_negative_int,
        default=0,
        help="cosine only: constant lr until this step, then the decay (resume a constant-lr "
        "run into a final decay with --steps STEP+N --decay-start STEP)",
    )
    p.add_argument("--warmup", type=non_negative_int, default=200,
                   help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=fraction, default=0.999,
                   help="decay of the exponential moving average of the weights (what is exported)")
    p.add_argument("--base-channels", type=positive_int, default=32,
                   help="UNet channels of the first level")
    p.add_argument("--channel-mults", type=positive_int_list, default=[1, 2, 2, 2],
                   help="comma-separated channel multipliers, one per level (each level after "
                   "the first halves the resolution), e.g. 1,2,2,2")
    p.add_argument("--num-res-blocks", type=positive_int, default=2,
                   help="residual blocks per level")
    p.add_argument("--attention", type=int_list, default=[8],
                   help="comma-separated feature-map sizes with self-attention: the image size "
                   "halved per level, e.g. 32,16,8,4 for 32x32 images and 4 levels (default 8)")
    p.add_argument("--dropout", type=fraction, default=0.0,
                   help="dropout probability in the residual blocks, in [0, 1)")
    p.add_argument("--objective", choices=["eps", "flow"], default="eps",
                   help="eps: noise prediction on the linear VP schedule; flow: conditional flow "
                   "matching (rectified flow, x_t = (1 - t) x_0 + t x_1, target x_1 - x_0)")
    p.add_argument("--source", choices=["gaussian", "pca", "random"], default="gaussian",
                   help="flow only: the source, the full Gaussian N(0, I) or a Gaussian "
                   "restricted to the top-k principal subspace of the training images (pca) or "
                   "to a random k-dim subspace (the control)")
    p.add_argument("--source-k", type=positive_int, default=None,
                   help="flow pca/random sources: the subspace dimension k")
    p.add_argument("--source-mean", choices=["zero", "data"], default="zero",
                   help="flow pca/random sources: centre at 0 or at the data mean")
    p.add_argument("--source-scale", choices=["unit", "data"], default="unit",
                   help="flow pca/random sources: unit variance along each direction (whitened) "
                   "or the data's own spread")
    p.add_argument("--source-seed", type=int, default=0,
                   help="flow random source: the seed of its random frame")
    p.add_argument("--train-images", type=non_negative_int, default=0,
                   help="train on the first N images of the training split (0: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="run seed: the initial weights and the draws of every step derive from it")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: bfloat16 autocast of the forward pass (faster on CPUs with AVX512-BF16)",
    )
    p.add_argument("--ckpt-every", type=positive_int, default=250,
                   help="write the checkpoint every this many steps")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )
    p.add_argument(
        "--max-steps-this-run",
        type=positive_int,
        default=None,
        help="stop after this many steps (checkpointed); rerun to continue",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="a folder: when done, export the EMA weights into it as DIR/<dataset>.safetensors "
        "+ DIR/<dataset>.json (the folder is created; files of those names are replaced)",
    )
    p.add_argument("--latent", metavar="AE", default=None,
                   help="an autoencoder export (diffinv train-autoencoder): train the diffusion "
                   "on its scaled latents; --export then writes a latent prior (the autoencoder "
                   "copied beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from diffinv.cli import training_data_set
    from diffinv.learn.checkpoint import check_export
    from diffinv.learn.trainer import TrainConfig, export_prior, train_prior

    if args.threads:
        torch.set_num_threads(args.threads)
    name = training_data_set(args.dataset)
    if args.export:
        check_export(args.export, name)
    cfg = TrainConfig(
        dataset=name,
        out=args.out,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        warmup=args.warmup,
        decay_start=args.decay_start,
        ema_decay=args.ema_decay,
        seed=args.seed,
        precision=args.precision,
        ckpt_every=args.ckpt_every,
        objective=args.objective,
        source=_source(args),
        train_images=args.train_images,
        unet=dict(
            base_channels=args.base_channels,
            channel_mults=args.channel_mults,
            num_res_blocks=args.num_res_blocks,
            attention_resolutions=args.attention,
            dropout=args.dropout,
        ),
    )
    data = None
    if args.latent:  # a latent diffusion: the data are the autoencoder's scaled latents
        from diffinv.latent.training import latent_training_data

        cfg.dataset, data = latent_training_data(args.latent, name, cfg.objective,
                                                 cfg.train_images)
    ckpt = train_prior(
        cfg,
        data=data,
        device=args.device,
        progress=not args.no_progress,
        max_steps_this_run=args.max_steps_this_run,
    )
    print(f"checkpoint: {ckpt}")
    if args.export:
        if args.latent:
            from diffinv.latent.training import export_latent_prior

            path = export_latent_prior(ckpt, args.latent, args.export, f"{name}-latent")
        else:
            path = export_prior(ckpt, args.export, name)
        print(f"exported: {path}")
    return 0


def _source(args: argparse.Namespace) -> dict:
    """The ``TrainConfig.source`` of the --source options (refusing them without a flow)."""
    from diffinv.errors import DiffinvError

    if args.objective != "flow":
        if args.source != "gaussian" or args.source_k is not None:
            raise DiffinvError("--source and --source-k apply to --objective flow only")
        return {"kind": "gaussian"}
    if args.source == "gaussian":
        if args.source_k is not None:
            raise DiffinvError("--source-k applies to --source pca or random")
        return {"kind": "gaussian"}
    if args.source_k is None:
        raise DiffinvError(f"--source {args.source} needs --source-k (the subspace dimension)")
    out = {"kind": args.source, "k": args.source_k, "mean": args.source_mean,
           "scale": args.source_scale}
    if args.source == "random":
        out["seed"] = args.source_seed
    return out
