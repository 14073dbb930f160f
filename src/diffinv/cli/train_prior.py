"""``diffinv train-prior``: train (or resume) a diffusion prior on a data set."""

from __future__ import annotations

import argparse

from diffinv.cli import fraction, int_list, non_negative_int, positive_int, positive_int_list
from diffinv.cli._trainer_args import add_run_options, add_schedule_options

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
    add_schedule_options(p, steps=10_000, batch=64, lr=6e-4, lr_schedule="constant",
                         batch_help="global batch size", decay_start=True)
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
    add_run_options(p, ckpt_every=250, device_help="cpu, cuda, cuda:1 ... (default: cuda if "
                    "present)", export_help="a folder: when done, export the EMA weights into it "
                    "as DIR/<dataset>.safetensors + DIR/<dataset>.json (the folder is created; "
                    "existing files of those names only with --overwrite)")
    p.add_argument("--latent", metavar="AE", default=None,
                   help="an autoencoder export (diffinv train-autoencoder): train the diffusion "
                   "on its scaled latents; --export then writes a latent prior (the autoencoder "
                   "copied beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffinv.cli._trainer_args import schedule_config, start_run, train_and_export
    from diffinv.learn.trainer import TrainConfig, export_prior, train_prior

    name, stem = start_run(args, lambda name: f"{name}-latent" if args.latent else name)
    if args.latent and args.export:
        _check_autoencoder_copy(args, stem)
    cfg = TrainConfig(
        dataset=name,
        out=args.out,
        **schedule_config(args),
        seed=args.seed,
        precision=args.precision,
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

    def export(ckpt: Path) -> Path:
        if args.latent:
            from diffinv.latent.training import export_latent_prior

            return export_latent_prior(ckpt, args.latent, args.export, stem)
        return export_prior(ckpt, args.export, name)

    return train_and_export(args, train_prior, cfg, export, data=data)


def _check_autoencoder_copy(args: argparse.Namespace, stem: str) -> None:
    """A latent export also copies the autoencoder beside it (``STEM-autoencoder.*``): refuse,
    before training, to replace such existing files without ``--overwrite`` (unless ``--latent``
    already is that file)."""
    from pathlib import Path

    from diffinv.learn.checkpoint import check_export

    copy = Path(args.export) / f"{stem}-autoencoder.safetensors"
    if not (copy.exists() and copy.resolve() == Path(args.latent).resolve()):
        check_export(args.export, f"{stem}-autoencoder", overwrite=args.overwrite)


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
