"""``diffinv measure``: make a seeded measurement y = A(x) + n and save it (or list the models)."""

from __future__ import annotations

import argparse
import json
import sys

from diffinv.cli import noise_help, positive_int

HELP = ("make a measurement y = A(x) + n from images, a clip or a data set and save it (--list: "
        "models)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("measure", help=HELP, description=HELP + ". Example: diffinv measure "
                       "--dataset fashion32:test:17 --op motion-blur --noise gaussian:0.05 "
                       "--seed 3 -o m/. A clip (a folder of frames, an animated GIF, an MP4 with "
                       "imageio-ffmpeg, or --dataset fashion32-video:test:0) with a clip operator "
                       "(--op video-sr4, frames:NAME) gives a clip measurement")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image file(s) (PNG, JPEG...), or "
                   "one clip: a folder of frames (image files in name order), an animated GIF, "
                   "or a video file (MP4... needs imageio-ffmpeg)")
    p.add_argument("--dataset", metavar="SPEC", help="images from a data set, e.g. "
                   "fashion32:test:17 or mnist32:test:0-3; clips from a clip data set, e.g. "
                   "fashion32-video:test:0-3 or mnist32-bounce:test:0")
    p.add_argument("--op", help="operator name (see --list; a clip takes a clip operator)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="operator setting, e.g. -p std=2.0 -p boundary=reflect (repeatable)")
    p.add_argument("--noise", default="gaussian:0.05", help=noise_help("gaussian:0.05"))
    p.add_argument("--seed", type=int, default=0, help="run seed; image i's randomness derives "
                   "from (seed, its index)")
    p.add_argument("-o", "--output", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder that diffinv wrote (its files are "
                   "deleted when the new measurement is complete); a folder holding other "
                   "files, the working folder and the input images are never replaced")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3],
                   help="image files: 1 = gray, 3 = RGB")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image files: centre-crop to a square and resize to SIZE x SIZE")
    p.add_argument("--domain", default=None, help="prior domain recorded in the spec (default: "
                   "the data set's name, or 'image')")
    p.add_argument("--frames", type=positive_int, default=None,
                   help="clips: frames of a clip data set's clips (default 8), or the first "
                   "FRAMES frames of a clip file")
    p.add_argument("--clip-seed", type=int, default=0,
                   help="clip data sets: the seed of the clips' motion (clip i from (seed, i); "
                   "default 0)")
    p.add_argument("--fps", type=float, default=None,
                   help="clips: frame rate stored with the measurement (default: the file's, "
                   "else 8)")
    p.add_argument("--list", action="store_true", help="list operators, clip operators and noise "
                   "models")
    p.set_defaults(func=run)


def parse_settings(items: list[str]) -> dict:
    """``["std=2.0", "boundary=reflect"]`` -> ``{"std": 2.0, "boundary": "reflect"}`` (JSON)."""
    from diffinv.errors import DiffinvError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DiffinvError(f"operator setting {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def print_models() -> None:
    from diffinv.physics import list_noise_models, list_operators
    from diffinv.video import list_clip_operators

    ops, noises, clip_ops = list_operators(), list_noise_models(), list_clip_operators()
    w = max(len(n) for n, _ in ops + noises + clip_ops)
    print("operators:")
    for name, desc in ops:
        print(f"  {name:<{w}}  {desc}")
    print("clip operators (for a clip: a folder of frames, a GIF, an MP4, or a clip data set such "
          "as fashion32-video:test:0):")
    for name, desc in clip_ops:
        print(f"  {name:<{w}}  {desc}")
    print("noise models:")
    for name, desc in noises:
        print(f"  {name:<{w}}  {desc}")


def check_files_fit(paths: list[str], size: int | None, channels: int,
                    operator: str | None) -> None:
    """Refuse, before reading any, image files whose measuring would not fit in memory: each is
    ``size`` x ``size`` once read (without ``--size``: its own size, from the file's header), and
    measuring needs a multiple of their float32 bytes (:func:`diffinv.resources.measure_bytes`)."""
    from diffinv.resources import check_memory, measure_bytes

    dims = [(size, size) if size else _header_size(p) for p in paths]
    total = sum(measure_bytes(1, channels, h, w, operator) for h, w in dims)
    shown = dims[0] if len(set(dims)) == 1 else max(dims, key=lambda d: d[0] * d[1])
    check_memory(total, f"measuring {len(paths)} image(s) of {channels}x{shown[0]}x{shown[1]}"
                 f"{' (the largest)' if len(set(dims)) > 1 else ''} with {operator or 'the operator'}",
                 hint="choose a smaller --size or fewer images")


def _header_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file from its header (nothing decoded); (0, 0) when unreadable
    (reading it reports why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except Exception:  # noqa: BLE001 -- read_image says what is wrong with the file
        return 0, 0


def run(args: argparse.Namespace) -> int:
    from diffinv.errors import DiffinvError

    if args.list:
        print_models()
        return 0
    from diffinv.cli.measure_clip import is_clip_request, run_clip

    if is_clip_request(args):
        return run_clip(args)
    if args.frames is not None or args.fps is not None:
        raise DiffinvError("--frames and --fps are for clips (a folder of frames, a GIF, an MP4 or "
                           "a clip data set such as fashion32-video:test:0)")
    if bool(args.images) == bool(args.dataset):
        raise DiffinvError("give image file(s) or --dataset SPEC (one of the two)")
    if not args.op:
        raise DiffinvError("--op is required (see diffinv measure --list)")
    if not args.output:
        raise DiffinvError("-o/--output is required")

    import torch

    from diffinv.checks import check_output_folder
    from diffinv.physics import make_noise, make_operator, measure, save_measurement

    check_output_folder(args.output, overwrite=args.overwrite, inputs=args.images)
    op = make_operator(args.op, **parse_settings(args.param))
    noise = make_noise(args.noise)
    if args.dataset:
        from diffinv.data import get_images
        from diffinv.data.datasets import canonical_name

        if args.dataset.strip().count(":") < 2:  # DATASET:SPLIT, no indices
            print(f"diffinv measure: note: {args.dataset} names no images, so every image of the "
                  f"split is measured (e.g. {args.dataset.strip()}:0-7 selects eight)",
                  file=sys.stderr)
        x, _, indices = get_images(args.dataset)
        domain = args.domain or canonical_name(args.dataset.split(":", 1)[0])
        source = args.dataset
    else:
        from diffinv.data.images import read_image

        check_files_fit(args.images, args.size, args.channels, getattr(op, "registry_name", None))
        xs = [read_image(p, size=args.size, channels=args.channels) for p in args.images]
        if len({tuple(t.shape) for t in xs}) > 1:
            raise DiffinvError("the images differ in size; pass --size to resize them")
        x, indices = torch.cat(xs), list(range(len(xs)))
        domain = args.domain or "image"
        source = ",".join(args.images)
    m = measure(x, op, noise, args.seed, indices, domain=domain, source=source)
    out = save_measurement(m, args.output, overwrite=args.overwrite, inputs=args.images)
    hidden = " (true parameters hidden in truth.safetensors)" if m.blind else ""
    print(f"wrote {out}: y {tuple(m.y.shape)} = {m.operator}(x) + {m.noise}, seed {m.seed}, "
          f"{len(indices)} image(s) from {source}{hidden}")
    return 0
