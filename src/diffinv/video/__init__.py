"""Video: clips ``(T, C, H, W)`` in [-1, 1], their flow, clip data sets, clip operators, and the
warping error.

* :mod:`~diffinv.video.clips`: the clip contract (``check_clip``, ``stack_frames``);
* :mod:`~diffinv.video.flow`: the flow convention, backward warping, OpenCV flow estimation;
* :mod:`~diffinv.video.data`: clips with known motion from the 32x32 images (``get_clips``);
* :mod:`~diffinv.video.operators`: per-frame and temporal operators (``make_clip_operator``);
* :mod:`~diffinv.video.metrics`: the warping error (``warping_error``);
* :mod:`~diffinv.video.measurement`: clip measurements (``measure_clip``, save and load);
* :mod:`~diffinv.video.dmplug`: the dmplug-video solver (``DMPlugVideo``, imported on first use);
* :mod:`~diffinv.video.perframe`: image solvers frame by frame (``FrameByFrame``,
  ``make_clip_solver``, imported on first use);
* :mod:`~diffinv.video.io`: clip files (``read_clip``: a folder of frames, a GIF, an MP4).
"""

from diffinv.video.clips import MIN_FRAMES, check_clip, check_flow, stack_frames
from diffinv.video.data import (
    MOTIONS,
    VIDEO_SETS,
    Clip,
    ClipSet,
    clip_generator,
    get_clips,
    make_clip,
    make_clips,
    similarity_clip,
)
from diffinv.video.flow import estimate_flow, fb_consistent, warp_backward, warp_clip
from diffinv.video.measurement import (
    ClipMeasurement,
    load_clip_measurement,
    measure_clip,
    save_clip_measurement,
)
from diffinv.video.metrics import warping_error, warping_error_estimated
from diffinv.video.operators import (
    CLIP_OPERATORS,
    ClipChain,
    ClipOperator,
    PerFrame,
    TemporalBlur,
    list_clip_operators,
    make_clip_operator,
)

__all__ = [
    "CLIP_OPERATORS", "MIN_FRAMES", "MOTIONS", "VIDEO_SETS", "Clip", "ClipChain",
    "ClipOperator", "ClipSet", "PerFrame", "TemporalBlur", "check_clip", "check_flow",
    "clip_generator", "estimate_flow", "fb_consistent", "get_clips", "list_clip_operators",
    "make_clip", "make_clip_operator", "make_clips", "similarity_clip", "stack_frames",
    "warp_backward", "warp_clip", "warping_error", "warping_error_estimated",
    "ClipMeasurement", "measure_clip", "save_clip_measurement", "load_clip_measurement",
    "DMPlugVideo", "FrameByFrame", "make_clip_solver", "read_clip",
]


def __getattr__(name: str):
    # the solvers pull in the solver stack: imported when first asked for
    if name == "DMPlugVideo":
        from diffinv.video.dmplug import DMPlugVideo

        return DMPlugVideo
    if name in ("FrameByFrame", "make_clip_solver"):
        from diffinv.video import perframe

        return getattr(perframe, name)
    if name == "read_clip":
        from diffinv.video.io import read_clip

        return read_clip
    raise AttributeError(f"module 'diffinv.video' has no attribute {name!r}")
