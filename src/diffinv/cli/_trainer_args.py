"""Options and run steps shared by the single-network trainer commands (``train-prior``,
``train-autoencoder``, ``train-deblur-net``).

:func:`add_schedule_options` and :func:`add_run_options` add the optimisation and run options
every such command has, with its own defaults; :func:`schedule_config` reads them back as config
fields; :func:`start_run` and :func:`train_and_export` are the first and last steps of a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffinv.cli import add_threads_option, fraction, non_negative_int, positive_float, positive_int

#: the ``--ema-decay`` help of the trainers that export the EMA weights
EMA_HELP = "decay of the exponential moving average of the weights (what is exported)"
#: the default ``--device`` help
DEVICE_HELP = "cpu, cuda ... (default: cuda if present)"


def add_schedule_options(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float,
                         lr_schedule: str = "cosine", batch_help: str = "batch size",
                         decay_start: bool = False, ema_help: str = EMA_HELP) -> None:
    """``--steps``, ``--batch``, ``--lr``, ``--lr-schedule`` (``--decay-start`` too where
    ``decay_start``), ``--warmup`` and ``--ema-decay``, with a command's own defaults: the fields
    that :func:`diffinv.learn.trainer.learning_rate` and the EMA read."""
    p.add_argument("--steps", type=positive_int, default=steps, help="total optimisation steps")
    p.add_argument("--batch", type=positive_int, default=batch, help=batch_help)
    p.add_argument("--lr", type=positive_float, default=lr, help="AdamW learning rate")
    default = " (default)" if lr_schedule == "cosine" else ""
    start = ", starting at --decay-start" if decay_start else ""
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=lr_schedule,
                   help=f"cosine{default}: down to 10%% of --lr at --steps{start}")
    if decay_start:
        p.add_argument("--decay-start", type=non_negative_int, default=0,
                       help="cosine only: constant lr until this step, then the decay (resume a "
                       "constant-lr run into a final decay with --steps STEP+N --decay-start STEP)")
    p.add_argument("--warmup", type=non_negative_int, default=200,
                   help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=fraction, default=0.999, help=ema_help)


def add_run_options(p: argparse.ArgumentParser, *, ckpt_every: int, export_help: str,
                    device_help: str = DEVICE_HELP, export_metavar: str = "DIR") -> None:
    """``--ckpt-every``, ``--threads``, ``--device``, ``--max-steps-this-run``, ``--export``
    (described by ``export_help``; ``export_metavar`` DIR for a folder, FILE for a file stem),
    ``--overwrite`` and ``--no-progress``: how every trainer's run is carried out and exported."""
    p.add_argument("--ckpt-every", type=positive_int, default=ckpt_every,
                   help="write the checkpoint every this many steps")
    add_threads_option(p)
    p.add_argument("--device", default=None, help=device_help)
    p.add_argument("--max-steps-this-run", type=positive_int, default=None,
                   help="stop after this many steps (checkpointed); rerun to continue")
    p.add_argument("--export", metavar=export_metavar, default=None, help=export_help)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --export files if they exist (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def schedule_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of the options of :func:`add_schedule_options` and ``--ckpt-every``."""
    fields = ["steps", "batch", "lr", "lr_schedule", "warmup", "ema_decay", "ckpt_every"]
    if "decay_start" in args:
        fields.insert(4, "decay_start")
    return {k: getattr(args, k) for k in fields}


def start_run(args: argparse.Namespace,
              export_name: Callable[[str], str] = lambda name: name) -> tuple[str, str]:
    """Check ``--dataset`` and refuse an ``--export`` that could not be
    written, before any data loads: (the data set's name, the export's file name, which
    ``export_name`` makes of the data set's)."""
    from diffinv.cli import training_data_set
    from diffinv.learn.checkpoint import check_export

    name = training_data_set(args.dataset)
    stem = export_name(name)
    if args.export:
        check_export(args.export, stem, overwrite=args.overwrite)
    return name, stem


def train_and_export(args: argparse.Namespace, train: Callable[..., Path], cfg: Any,
                     export: Callable[[Path], Path], **kwargs: Any) -> int:
    """Run ``train(cfg, **kwargs)`` with the run options, print its checkpoint and, with
    ``--export``, ``export`` it (printing the exported file) once the run has reached
    ``cfg.steps``: a run stopped before (``--max-steps-this-run``, Ctrl-C, SIGTERM) is not
    exported, so an export never holds a half-trained model by accident; rerun to continue.
    Returns the exit code 0."""
    ckpt = train(cfg, **kwargs, device=args.device, progress=not args.no_progress,
                 max_steps_this_run=args.max_steps_this_run)
    print(f"checkpoint: {ckpt}")
    if args.export and run_is_done(ckpt, cfg.steps):
        print(f"exported: {export(ckpt)}")
    return 0


def run_is_done(ckpt: Path, steps: int) -> bool:
    """Whether the run of ``ckpt`` reached its last step; if not, say that it is not exported
    (every trainer's ``--export`` writes finished models only)."""
    from diffinv.learn.checkpoint import load_checkpoint

    step = int(load_checkpoint(ckpt).get("step", 0))
    if step < int(steps):
        print(f"stopped at step {step} of {steps}: not exported (rerun the same command to "
              "continue; it exports when the run is done)")
        return False
    return True
