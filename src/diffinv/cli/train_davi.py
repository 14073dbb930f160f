"""``diffinv train-davi``: train (or resume) DAVI's one-step generator for one task."""

from __future__ import annotations

import argparse

from diffinv.cli import fraction, non_negative_float, positive_float, positive_int
from diffinv.cli._trainer_args import add_run_options

HELP = "train or resume DAVI's amortised one-step posterior sampler for one task"


def _flag(s: str) -> bool:
    if s.lower() in ("on", "1", "true", "yes"):
        return True
    if s.lower() in ("off", "0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {s!r}")


def register(sub: argparse._SubParsersAction) -> None:
    from diffinv.learn.davi_trainer import TASK_DEFAULTS, TASKS

    defaults = "; ".join(f"{k}: " + ", ".join(f"{n}={v}" for n, v in d.items())
                         for k, d in TASK_DEFAULTS.items())
    p = sub.add_parser(
        "train-davi", help=HELP,
        description=HELP + " (Lee et al., ECCV 2024). Measurements are synthesised on the fly "
        "from the prior domain's train split (sigma 0.05; operators at their 32x32 defaults, "
        "inpaint-box with one box per sample). A run whose --out folder holds a checkpoint "
        "resumes where it stopped; launch with `torchrun --nproc_per_node N -m diffinv.cli "
        f"train-davi ...` for data parallelism. Task defaults (official FFHQ): {defaults}.")
    p.add_argument("--prior", default="fashion32", help="teacher prior (name or file)")
    p.add_argument("--task", required=True, choices=list(TASKS),
                   help="the inverse problem the generator is trained for")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    p.add_argument("--steps", type=positive_int, default=2000, help="total alternating iterations")
    p.add_argument("--batch", type=positive_int, default=8, help="global batch size")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="generator learning rate")
    p.add_argument("--s-lr", type=positive_float, default=1e-4,
                   help="implicit score learning rate")
    p.add_argument("--d-lr", type=positive_float, default=1e-4,
                   help="discriminator learning rate (--gan)")
    p.add_argument("--ema-decay", type=fraction, default=0.999,
                   help="decay of the exponential moving average of the weights (what is exported)")
    p.add_argument("--t-ikl", type=positive_int, default=None,
                   help="IKL times are uniform below this (1..1000)")
    p.add_argument("--weight-con", type=non_negative_float, default=None,
                   help="measurement-consistency weight")
    p.add_argument("--reg-coeff", type=non_negative_float, default=None,
                   help="weight of the clean-image MSE term (0: off)")
    p.add_argument("--perturb-h", type=non_negative_float, default=0.1,
                   help="noise level h of the Perturbed Posterior Bridge (>= 0)")
    p.add_argument("--sigma", type=non_negative_float, default=0.05,
                   help="measurement noise std ([-1,1] units, >= 0)")
    p.add_argument("--kl-schedule", choices=["linear", "i2sb"], default="linear",
                   help="schedule of the KL branch: the teacher's (linear) or the official i2sb")
    p.add_argument("--bridge", type=_flag, default=True, metavar="on|off",
                   help="PPB bridge from the clean image (off: inputs y' only)")
    p.add_argument("--gan", type=_flag, default=False, metavar="on|off",
                   help="the official PatchGAN term with its adaptive weight")
    p.add_argument("--lift", choices=["bilinear", "pinv"], default="bilinear",
                   help="SR: y' = bilinear resize of y (official) or the avg-pool pseudo-inverse")
    p.add_argument("--seed", type=int, default=0,
                   help="run seed: the initial weights and the draws of every step derive from it")
    p.add_argument("--log-every", type=positive_int, default=10,
                   help="append a line to train_log.jsonl every this many steps")
    add_run_options(p, ckpt_every=100, export_help="a folder: when done, export the EMA "
                    "generator into it as DIR/davi-PRIOR-OPERATOR.safetensors + .json (the card)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from diffinv.cli._trainer_args import run_is_done
    from diffinv.learn.checkpoint import check_export
    from diffinv.learn.davi_trainer import DaviConfig, export_davi, export_name, train_davi

    if args.export:
        check_export(args.export, export_name(args.prior, args.task), overwrite=args.overwrite)
    cfg = DaviConfig(prior=args.prior, task=args.task, out=args.out, steps=args.steps,
                     batch=args.batch, lr=args.lr, s_lr=args.s_lr, d_lr=args.d_lr,
                     ema_decay=args.ema_decay, t_ikl=args.t_ikl, weight_con=args.weight_con,
                     reg_coeff=args.reg_coeff, perturb_h=args.perturb_h, sigma=args.sigma,
                     kl_schedule=args.kl_schedule, bridge=args.bridge, gan=args.gan,
                     lift=args.lift, seed=args.seed, ckpt_every=args.ckpt_every,
                     log_every=args.log_every)
    ckpt = train_davi(cfg, device=args.device, progress=not args.no_progress,
                      max_steps_this_run=args.max_steps_this_run)
    print(f"checkpoint: {ckpt}")
    if args.export and run_is_done(ckpt, cfg.steps):
        command = "diffinv " + shlex.join(sys.argv[1:])
        path = export_davi(ckpt, args.export, extra={"command": command})
        print(f"exported: {path}")
    return 0
