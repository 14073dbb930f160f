"""``diffinv bench FILE.toml``: run (or resume) a benchmark grid and render its tables."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap

from diffinv.cli import add_threads_option


class _TaskFileFormat(str):
    """The epilog's place: :class:`_BenchHelp` writes the task-file format there."""


class _BenchHelp(argparse.RawDescriptionHelpFormatter):
    """Renders the task-file format (:func:`diffinv.bench.taskformat.task_file_format`, derived
    from the registered job kinds) when help is printed, not when the parser is built, so that
    building the CLI imports no job kind."""

    def add_text(self, text: str | None) -> None:
        if isinstance(text, _TaskFileFormat):
            from diffinv.bench.taskformat import task_file_format

            text = task_file_format()
        super().add_text(text)


class _ExplainFormat(argparse.Action):
    """``--explain-format``: print the task-file format and exit (no FILE.toml needed)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the task-file format (every [run] key, job kind, grid axis "
                              "and option, derived from the registered kinds) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from diffinv.bench.taskformat import task_file_format

        sys.stdout.write(task_file_format())
        parser.exit()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run or resume a benchmark task file and render its Markdown/CSV tables",
        description=textwrap.fill(
            "Run the grid of a task file (methods x tasks x priors x N images, or another job "
            "kind's grid), appending one JSON line per unit to NAME.jsonl in the output directory. "
            "A rerun resumes: units with a row are skipped. The report NAME.md / NAME.csv (mean or "
            "median with a 95% interval and N per cell) merges every results file of the run. "
            "Under torchrun each rank takes its share of the units (RANK/WORLD_SIZE).", 78),
        epilog=_TaskFileFormat(),
        formatter_class=_BenchHelp,
    )
    p.add_argument("task", metavar="FILE.toml", help="task file (format below)")
    p.add_argument("--explain-format", action=_ExplainFormat)
    p.add_argument("--shard", metavar="I/N", default=None,
                   help="do only shard I of N (0-based) of the units; each shard writes its own "
                        "file, the report merges them")
    p.add_argument("--only", metavar="AXIS=VALUE", action="append", default=None,
                   help="compute only the cells whose AXIS entry has this label or name, e.g. "
                        "--only prior=fashion32; repeated on one axis: either value, on "
                        "different axes: all must hold; the report still merges every row of "
                        "the run")
    p.add_argument("--device", metavar="DEVICE", default=None,
                   help="torch device to compute on instead of the task file's [run] device, "
                        "e.g. cuda or cuda:1; each row records where it ran (restore tables: "
                        "rows from any device merge; timing kinds keep devices apart)")
    p.add_argument("--batch-size", metavar="B", type=int, default=None,
                   help="images per solver call instead of the task file's [run] batch_size "
                        "(rows record their batch)")
    p.add_argument("--split", choices=("images", "batches"), default="images",
                   help="how --shard divides the work: 'images' (default) gives shard I the "
                        "images i with i %% N == I of every cell; 'batches' gives it whole "
                        "batches I, I+N, ... of the grid, so that N workers sharing one GPU each "
                        "keep a full batch")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: re-render the tables from the rows on disk")
    p.add_argument("--gallery", metavar="K", type=int, default=None,
                   help="restore tables: recompute images 0..K-1 of each (--only) cell as the "
                        "rows were computed and draw NAME_gallery/TASK.png (truth | y | each "
                        "method, with PSNRs) and NAME_gallery.md; writes no rows, checks the "
                        "recomputed PSNRs against the table's")
    p.add_argument("--fid", metavar="N", type=int, default=None,
                   help="restore tables: recompute images 0..N-1 of each (--only) cell as the "
                        "rows are computed (N may exceed n_images; FID wants ~1,000) and write "
                        "NAME_fid.md/.json: FID against the true images, the train-split floor, "
                        "PSNR, s/image; resumable (features per batch in NAME_fid/), takes "
                        "--shard and --batch-size; writes no rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffinv.bench.runner import run_benchmark

    if args.fid is not None:
        if args.report_only or args.gallery is not None:
            from diffinv.bench.errors import BenchConfigError

            raise BenchConfigError("--fid computes its own images: it takes neither "
                                   "--report-only nor --gallery")
        from diffinv.bench.fid import make_fid

        rep = make_fid(args.task, args.fid, only=args.only, shard=args.shard,
                       batch_size=args.batch_size, progress=not args.no_progress)
        print(f"wrote {rep.markdown} and {rep.json}", file=sys.stderr)
        return 0

    if args.gallery is not None:
        if args.shard or args.report_only:
            from diffinv.bench.errors import BenchConfigError

            raise BenchConfigError("--gallery computes its own images: it takes neither --shard "
                                   "nor --report-only")
        from diffinv.bench.gallery import make_gallery

        g = make_gallery(args.task, args.gallery, only=args.only, progress=not args.no_progress)
        print(f"wrote {g.markdown} and {len(g.images)} image(s) in "
              f"{g.images[0].parent if g.images else g.markdown.parent}", file=sys.stderr)
        return 0

    argv = ["diffinv", "bench", args.task]
    if args.shard:
        argv += ["--shard", args.shard]
    for spec in args.only or ():
        argv += ["--only", spec]
    if args.device:
        argv += ["--device", args.device]
    if args.batch_size is not None:
        argv += ["--batch-size", str(args.batch_size)]
    if args.split != "images":
        argv += ["--split", args.split]
    out = run_benchmark(args.task, shard=args.shard, only=args.only, report_only=args.report_only,
                        progress=not args.no_progress, invocation=shlex.join(argv),
                        device=args.device, batch_size=args.batch_size, split=args.split)
    if out.report is not None and args.report_only:
        print(f"wrote {out.files[0]} and {out.files[1]}", file=sys.stderr)
    return 0
