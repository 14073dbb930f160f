"""``diffinv train-likelihood``: train (or resume) CL-DPS's contrastive likelihood encoder."""

from __future__ import annotations

import argparse
import shlex

from diffinv.cli import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
)
from diffinv.cli._trainer_args import add_run_options

HELP = "train or resume CL-DPS's contrastive (MoCo) likelihood encoder on random blind measurements"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-likelihood", help=HELP,
        description=HELP + ". Queries are measurements y of training images under an operator "
        "drawn per sample from --families (random strength, Gaussian noise up to --sigma-max); "
        "positive keys are the same image diffused to random noise levels; negatives a queue of "
        "earlier keys. A run whose --out folder holds a checkpoint resumes where it stopped; "
        "--export writes the shipped file (both encoders, safetensors) and its card with the "
        "retrieval accuracy on 1,000 validation images. Launch with `torchrun --nproc_per_node N "
        "-m diffinv.cli train-likelihood ...` for data parallelism.")
    p.add_argument("--prior", default="fashion32",
                   help="the embedded prior (and data set) the encoder is for: fashion32 or mnist32")
    p.add_argument("--families", default="motion,gaussian,rotation,zoom",
                   help="comma-separated operator families of the queries")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    p.add_argument("--steps", type=positive_int, default=4000, help="total optimisation steps")
    p.add_argument("--batch", type=positive_int, default=128, help="global batch of queries")
    p.add_argument("--positives", type=positive_int, default=4,
                   help="noisy positive keys per query")
    p.add_argument("--queue", type=positive_int, default=4096, help="negative keys kept (K)")
    p.add_argument("--momentum", type=fraction, default=0.999,
                   help="key-encoder momentum m, in [0, 1)")
    p.add_argument("--tau", type=positive_float, default=0.07, help="InfoNCE temperature")
    p.add_argument("--lr", type=positive_float, default=0.03,
                   help="SGD learning rate (cosine decay)")
    p.add_argument("--warmup", type=non_negative_int, default=200,
                   help="linear learning-rate warm-up steps")
    p.add_argument("--intensity-weight", type=non_negative_float, default=1.0,
                   help="weight of the intensity head's loss (0: no head)")
    p.add_argument("--sigma-max", type=non_negative_float, default=0.05,
                   help="largest query noise sigma")
    p.add_argument("--key-abar-min", type=fraction, default=0.0,
                   help="positives are diffused to abar ~ U(this, 1) (0: the snapshot's U(0, 1))")
    p.add_argument("--crop", type=non_negative_int, default=0,
                   help="train on random CROPxCROP windows (query: the window of y; keys: the same "
                   "window of x diffused); the encoder's input size; 0: the whole image")
    p.add_argument("--hard-negatives", default="",
                   help="our extension (not the paper's): comma-separated per-query negative keys, "
                   "among 'y' (the measurement itself), 'reblur' (another random measurement of "
                   "the same image) and 'mix' (the clean image with 5-50%% of another image), "
                   "diffused like the positives")
    p.add_argument("--hard-noise", choices=("own", "matched"), default="own",
                   help="hard negatives diffused to their own random level (own) or with each "
                   "positive's level and noise (matched: they differ from it by content alone)")
    p.add_argument("--key-tower", choices=("momentum", "trained"), default="momentum",
                   help="momentum: the key encoder is MoCo's momentum copy of the query encoder "
                   "(the paper); trained: a key encoder of its own, trained with in-batch "
                   "negatives, its momentum copy filling the queue (our extension)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: bfloat16 autocast of the encoders' forward passes")
    p.add_argument("--val-every", type=non_negative_int, default=0,
                   help="log the retrieval accuracy on --val-images validation images every this "
                   "many steps (0: never)")
    p.add_argument("--val-images", type=positive_int, default=500,
                   help="validation images of --val-every")
    p.add_argument("--val-stride", type=positive_int, default=8,
                   help="patch stride of a crop encoder's validation retrieval")
    p.add_argument("--val-abars", type=abar_list, default=(),
                   help="comma-separated key noise levels in (0, 1]: validation also logs "
                   "x_beats_y@A, the truth's key against the measurement's own key with both "
                   "diffused to abar A with the same noise (x_beats_y itself uses clean keys)")
    p.add_argument("--keep-every", type=non_negative_int, default=0,
                   help="also keep checkpoint_stepN.pt every this many steps (0: never)")
    p.add_argument("--width", type=positive_int, default=32,
                   help="first stage width of the ResNet")
    p.add_argument("--blocks", type=positive_int_list, default=[1, 1, 1],
                   help="residual blocks per stage, comma-separated (one number per stage)")
    p.add_argument("--dim", type=positive_int, default=128, help="embedding dimension")
    p.add_argument("--predictor", action="store_true",
                   help="a query-only MLP after the projection (MoCo v3's predictor): without it "
                   "the momentum key encoder scores a measurement's own key above any clean image")
    p.add_argument("--seed", type=int, default=0,
                   help="run seed: the initial weights and the draws of every step derive from it")
    add_run_options(p, ckpt_every=100, export_metavar="FILE", export_help="a file stem (not a "
                    "folder): after training, write the encoder file FILE.safetensors and its "
                    "card FILE.json (a trailing .safetensors is allowed; FILE's folder is created)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffinv.checks import check_output_file
    from diffinv.cli import training_data_set
    from diffinv.cli._trainer_args import run_is_done
    from diffinv.data import load_split
    from diffinv.learn.measurements import parse_families
    from diffinv.learn.moco import LikelihoodConfig, export_likelihood, train_likelihood

    training_data_set(args.prior, "--prior")
    export = None
    if args.export:
        export = (args.export if args.export.endswith(".safetensors")
                  else args.export + ".safetensors")
        check_output_file(export, overwrite=args.overwrite)
        check_output_file(export.removesuffix(".safetensors") + ".json", overwrite=args.overwrite)
    cfg = LikelihoodConfig(
        dataset=args.prior, out=args.out, families=parse_families(args.families),
        steps=args.steps, batch=args.batch, positives=args.positives, queue=args.queue,
        momentum=args.momentum, tau=args.tau, lr=args.lr, warmup=args.warmup,
        intensity_weight=args.intensity_weight, sigma_max=args.sigma_max,
        key_abar_min=args.key_abar_min, seed=args.seed, crop=args.crop,
        hard_negatives=tuple(h.strip() for h in args.hard_negatives.split(",") if h.strip()),
        hard_noise=args.hard_noise, key_tower=args.key_tower,
        precision=args.precision, val_every=args.val_every, val_images=args.val_images,
        val_stride=args.val_stride, keep_every=args.keep_every,
        val_abars=tuple(args.val_abars),
        ckpt_every=args.ckpt_every,
        encoder={"width": args.width, "blocks": list(args.blocks), "dim": args.dim,
                 "intensity_head": args.intensity_weight > 0,
                 **({"predictor": True} if args.predictor else {})})
    ckpt = train_likelihood(cfg, device=args.device, progress=not args.no_progress,
                            max_steps_this_run=args.max_steps_this_run)
    print(f"checkpoint: {ckpt}")
    if args.export and run_is_done(ckpt, cfg.steps):
        valid = load_split(args.prior, "valid").images[:1000]
        command = "diffinv " + " ".join(shlex.quote(a) for a in args.argv)
        path = export_likelihood(ckpt, export, valid=valid, command=command, prior=args.prior)
        print(f"encoder: {path}")
    return 0


def abar_list(text: str) -> tuple[float, ...]:
    """argparse type of ``--val-abars``: comma-separated numbers in (0, 1], e.g. ``0.9,0.5``."""
    import math

    try:
        values = tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        values = (math.nan,)
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated noise levels in (0, 1] such "
                                         f"as 0.9,0.5, got {text!r}")
    return values
