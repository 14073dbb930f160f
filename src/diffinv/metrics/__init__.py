"""Image-quality metrics: PSNR, SSIM, ST-LPIPS, (true LPIPS from user files), FID, digit class.

Images are (B, C, H, W) tensors in [-1, 1]; every metric maps them to the clipped [0, 1] frame
itself (:mod:`diffinv.metrics.frame`). Per-image metrics return a (B,) tensor; FID is a set metric
(:mod:`diffinv.metrics.fid`).

The registry :data:`METRICS` names the per-image metrics a benchmark can ask for; each entry is
a :class:`Metric` called as ``metric(x, ref, **options) -> (B,)`` and knows whether higher is
better. :func:`get_metric` looks one up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.metrics.digits import (
    confident_fraction,
    digit_accuracy,
    digit_agreement,
    digit_confident,
    digit_correct,
    digit_logits,
    digit_probabilities,
    predict_digits,
)
from diffinv.metrics.fid import (
    fid_from_features,
    fid_score,
    frechet_distance,
    inception_features,
    load_statistics,
    reference_statistics,
    save_statistics,
)
from diffinv.metrics.frame import MetricArgumentError, check_pair, to_unit
from diffinv.metrics.lpips import lpips_alex
from diffinv.metrics.psnr import mse, psnr
from diffinv.metrics.ssim import ssim
from diffinv.metrics.stlpips import st_lpips


@dataclass(frozen=True)
class Metric:
    """A named per-image metric: ``fn(x, ref, **options)`` returns a (B,) tensor."""

    name: str
    fn: Callable[..., torch.Tensor]
    higher_is_better: bool
    unit: str = ""
    description: str = ""

    def __call__(self, x: torch.Tensor, ref: torch.Tensor, **options) -> torch.Tensor:
        return self.fn(x, ref, **options)


def _digit_acc(x: torch.Tensor, ref: torch.Tensor, labels=None) -> torch.Tensor:
    if labels is None:
        raise MetricArgumentError("digit-acc needs the true classes: call it with labels=...")
    check_pair(x, ref)
    return digit_correct(x, labels)


def _digit_conf(x: torch.Tensor, ref: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    del ref  # a property of x alone; ref is accepted for the common call signature
    return digit_confident(x, threshold)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("psnr", psnr, True, "dB", "peak signal-to-noise ratio on the [0, 1] frame"),
        Metric("ssim", ssim, True, "", "SSIM, Gaussian 11x11 window, sigma 1.5 (Wang et al.)"),
        Metric("st-lpips", st_lpips, False, "",
               "shift-tolerant AlexNet LPIPS (Ghildyal & Liu 2022), 32 px upsampled to 128"),
        Metric("lpips-alex", lpips_alex, False, "",
               "true LPIPS-Alex; needs user-supplied backbone and heads files"),
        Metric("mse", mse, False, "", "mean squared error on the [0, 1] frame"),
        Metric("digit-acc", _digit_acc, True, "",
               "1 if the MNIST classifier gives x its true class (labels=...)"),
        Metric("digit-agree", digit_agreement, True, "",
               "1 if the MNIST classifier gives x the class it gives ref"),
        Metric("digit-conf", _digit_conf, True, "",
               "1 if the MNIST classifier's top probability for x exceeds 0.9"),
    ]
}

SET_METRICS: dict[str, Callable[..., float]] = {"fid": fid_score}


def get_metric(name: str) -> Metric:
    """The per-image metric called ``name``; UnknownNameError lists the known names."""
    if name in METRICS:
        return METRICS[name]
    if name in SET_METRICS:
        raise DiffinvError(f"{name!r} is a set metric, not a per-image one: use "
                           f"diffinv.metrics.{SET_METRICS[name].__name__}(x, ref)")
    raise UnknownNameError("metric", name, list(METRICS))


__all__ = [
    "METRICS",
    "SET_METRICS",
    "Metric",
    "confident_fraction",
    "digit_accuracy",
    "digit_agreement",
    "digit_confident",
    "digit_correct",
    "digit_logits",
    "digit_probabilities",
    "fid_score",
    "fid_from_features",
    "frechet_distance",
    "get_metric",
    "inception_features",
    "load_statistics",
    "lpips_alex",
    "mse",
    "predict_digits",
    "psnr",
    "reference_statistics",
    "save_statistics",
    "ssim",
    "st_lpips",
    "to_unit",
]
