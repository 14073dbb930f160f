"""The ``diffinv`` command line.

Each sub-command lives in its own module of this package, which exposes
``register(subparsers) -> None``; the module adds its parser (with a one-line ``help``) and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from diffinv.errors import DiffinvError

# Sub-command modules, in the order ``diffinv --help`` lists them.
COMMAND_MODULES = [
    "diffinv.cli.demo",
    "diffinv.cli.sample",
    "diffinv.cli.measure",
    "diffinv.cli.solve",
    "diffinv.cli.train_prior",
    "diffinv.cli.train_autoencoder",
    "diffinv.cli.train_likelihood",
    "diffinv.cli.train_davi",
    "diffinv.cli.train_deblur_net",
    "diffinv.cli.bench",
]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--size 0`` is a usage error, not a traceback later)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU thread count for the command (applied by :func:`main` before
    the command runs; default: torch's own choice, all cores). On a shared machine, one thread
    per process and one process per core (``--shard``) is usually the fastest use of the cores.
    More threads than the machine's cores (``os.cpu_count()``) only oversubscribe them (10000
    hung a solve), so :func:`main` caps N there and says so on stderr."""
    parser.add_argument("--threads", metavar="N", type=positive_int, default=None,
                        help="torch CPU threads, at most the machine's cores (default: torch's "
                             "choice, every core); with several processes on one machine give "
                             "each 1")


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers, e.g. ``1,2,2,2`` (empty: none)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, "
                                         f"got {text!r}") from None


def noise_help(default: str) -> str:
    """Help text of a ``--noise`` option: the spec syntax of every noise model."""
    from diffinv.physics import list_noise_models

    specs = ", ".join(name for name, _ in list_noise_models())
    return (f"noise spec: {specs} (default {default}); SIGMA in [-1, 1] units, LAMBDA counts at "
            "white; `diffinv measure --list` describes each")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffinv",
        description=(
            "Solve imaging inverse problems y = A(x) + n with diffusion-model priors. "
            "Run `diffinv COMMAND --help` for the options of a command."
        ),
    )
    from diffinv import __version__

    parser.add_argument("--version", action="version", version=f"diffinv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for cards
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        from diffinv.resources import cap_threads

        used, cores = cap_threads(int(threads))
        if used < threads:
            print(f"diffinv {args.command}: warning: --threads {threads} exceeds the {cores} CPU "
                  f"core(s) of this machine; using {used}", file=sys.stderr)
        torch.set_num_threads(used)
    try:
        return int(args.func(args) or 0)
    except DiffinvError as e:
        print(f"diffinv {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffinv {args.command}: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------- argparse types of the trainers
def _finite(text: str, rule: str, ok) -> float:
    """``text`` as a finite float satisfying ``ok``, else a usage error saying ``rule``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number {rule}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate, a temperature)."""
    return _finite(text, "> 0", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a noise level, a loss weight)."""
    return _finite(text, ">= 0", lambda v: v >= 0)


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1) (an EMA decay, a momentum, a dropout probability)."""
    return _finite(text, "in [0, 1)", lambda v: 0 <= v < 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up steps)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_int_list(text: str) -> list[int]:
    """argparse type: one or more comma-separated integers >= 1, e.g. ``1,2,2,2``."""
    values = int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected one or more comma-separated integers >= 1 "
                                         f"such as 1,2,2, got {text!r}")
    return values


def file_name(text: str) -> str:
    """argparse type: a plain file name, written into an export folder (no ``/``, no ``..``)."""
    from diffinv.learn.checkpoint import check_export_name

    try:
        return check_export_name(text, "name")
    except DiffinvError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def training_data_set(name: str, option: str = "--dataset") -> str:
    """The canonical name of the data set a trainer trains on (its whole train split); a
    ``DATASET:SPLIT[:INDICES]`` selection is refused with what to give instead."""
    from diffinv.data import canonical_name

    if ":" in name:
        base = name.split(":", 1)[0]
        raise DiffinvError(f"{option} {name!r}: the trainers use the whole train split of a data "
                           f"set; give its name only, e.g. {option} {base} (DATASET:SPLIT:INDICES "
                           "selections are for diffinv measure)")
    return canonical_name(name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
