"""``diffinv measure`` on a clip: a folder of frames, a GIF, an MP4 or a clip data set, measured
with a clip operator and saved as a clip measurement (:mod:`diffinv.video.measurement`).

Not a sub-command of its own: :mod:`diffinv.cli.measure` hands a clip request here
(:func:`is_clip_request`).
"""

from __future__ import annotations

import argparse
import sys

from diffinv.errors import DiffinvError


def _dataset_name(spec: str) -> str:
    return spec.strip().split(":", 1)[0]


def is_clip_request(args: argparse.Namespace) -> bool:
    """A clip is measured when the data set is a clip data set, the one input is a folder, a GIF or
    a video file, or the operator is a clip operator."""
    from diffinv.video.data import is_video_set
    from diffinv.video.io import is_clip_path
    from diffinv.video.operators import CLIP_OPERATORS, FRAMES_PREFIX

    if args.dataset and is_video_set(_dataset_name(args.dataset)):
        return True
    if any(is_clip_path(p) for p in args.images):
        return True
    return bool(args.op) and (args.op in CLIP_OPERATORS or args.op.startswith(FRAMES_PREFIX))


def _check_operator(name: str, settings: dict, images: list[str]):
    """The clip operator ``name``; an image operator's name is refused with the clip form (and,
    for a folder given with it, with what a folder is read as)."""
    from pathlib import Path

    from diffinv.physics.registry import OPERATORS
    from diffinv.video.operators import CLIP_OPERATORS, FRAMES_PREFIX, make_clip_operator

    if name in OPERATORS and name not in CLIP_OPERATORS:
        how = (f"--op {FRAMES_PREFIX}{name} applies it to every frame (diffinv measure --list "
               "shows the clip operators)")
        if images and Path(images[0]).is_dir():
            raise DiffinvError(f"{images[0]} is a folder, not an image file: a folder is read as "
                               f"a clip (its image files are the frames), which takes a clip "
                               f"operator: {how}; to measure images, name the image files")
        raise DiffinvError(f"{name!r} is an image operator; a clip takes a clip operator: {how}")
    return make_clip_operator(name, **settings)


def run_clip(args: argparse.Namespace) -> int:
    from diffinv.checks import check_output_folder
    from diffinv.cli.measure import parse_settings
    from diffinv.video.data import DEFAULT_FPS, DEFAULT_FRAMES, VIDEO_SETS, get_clips, is_video_set
    from diffinv.video.io import is_clip_path, read_clip
    from diffinv.video.measurement import measure_clip, save_clip_measurement

    if bool(args.images) == bool(args.dataset):
        raise DiffinvError("give one clip (a folder of frames, a GIF or an MP4) or --dataset SPEC "
                           "(one of the two)")
    if len(args.images) > 1:
        clips = [p for p in args.images if is_clip_path(p)]
        named = f" ({', '.join(clips[:3])}: {'a clip' if len(clips) == 1 else 'clips'})" \
            if clips else ""
        raise DiffinvError(f"give one clip at a time, not {len(args.images)} inputs{named}; the "
                           "frames of a clip go in one folder")
    if args.dataset and not is_video_set(_dataset_name(args.dataset)):
        raise DiffinvError(f"--dataset {args.dataset} holds images; a clip operator needs clips: "
                           f"a clip data set such as {_dataset_name(args.dataset)}-video:test:0 "
                           f"(clip data sets: {', '.join(VIDEO_SETS)})")
    if not args.op:
        raise DiffinvError("--op is required (see diffinv measure --list: clip operators)")
    if not args.output:
        raise DiffinvError("-o/--output is required")
    if args.fps is not None and not (args.fps > 0 and args.fps < float("inf")):
        raise DiffinvError(f"--fps must be a finite number > 0, got {args.fps}")

    check_output_folder(args.output, overwrite=args.overwrite, inputs=args.images)
    settings = parse_settings(args.param)
    _check_operator(args.op, dict(settings), args.images)
    flow = valid = None
    if args.dataset:
        spec = args.dataset.strip()
        if args.size is not None:
            raise DiffinvError("--size is for clip files; a clip data set's frames are 32x32")
        if spec.count(":") < 2:
            print(f"diffinv measure: note: {spec} names no clips, so a clip is made from every "
                  f"image of the split (e.g. {spec}:0-7 selects eight)", file=sys.stderr)
        cs = get_clips(spec, frames=args.frames or DEFAULT_FRAMES, seed=args.clip_seed)
        x, flow, valid, indices = cs.clips, cs.flows, cs.valid, list(cs.indices)
        fps = args.fps or cs.fps
        domain = args.domain or VIDEO_SETS[_dataset_name(spec)][0]
        source = spec
    else:
        path = args.images[0]
        x, file_fps = read_clip(path, size=args.size, channels=args.channels, frames=args.frames)
        indices = [0]
        fps = args.fps or file_fps or DEFAULT_FPS
        domain = args.domain or "image"
        source = path
    m = measure_clip(x, args.op, args.noise, args.seed, indices, settings=settings, fps=fps,
                     domain=domain, source=source, flow=flow, valid=valid)
    out = save_clip_measurement(m, args.output, overwrite=args.overwrite, inputs=args.images)
    B, T = m.x.shape[:2]
    print(f"wrote {out}: y {tuple(m.y.shape)} = {m.operator}(x) + {m.noise}, seed {m.seed}, "
          f"{B} clip(s) of {T} frames from {source}"
          + (" (exact flow kept with the hidden truth)" if flow is not None else ""))
    return 0
