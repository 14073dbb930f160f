"""Video: clips ``(T, C, H, W)`` in [-1, 1], their flow, clip data sets, clip operators, and the
warping error.

* :mod:`~diffinv.video.clips`: the clip contract (``check_clip``, ``stack_frames``);
* :mod:`~diffinv.video.flow`: the flow convention, backward warping, OpenCV flow estimation;
* :mod:`~diffinv.video.data`: clips with known motion from the 32x32 images (``get_clips``);
* :mod:`~diffinv.video.operators`: per-frame and temporal operators (``make_clip_operator``);
* :mod:`~diffinv.video.metrics`: the warping error (``warping_error``).
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
]
