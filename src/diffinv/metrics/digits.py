"""Digit-class metrics: does a restored MNIST digit keep its class?

Classifier: the ``ccexam==1.0.0`` MNIST network rebuilt here (no ccexam import):

    conv 1->32 3x3 pad 1, ReLU, max-pool 2  ->  conv 32->64 3x3 pad 1, ReLU, max-pool 2
    -> flatten (64 * 7 * 7 = 3136) -> linear 3136->128, ReLU -> linear 128->10 (logits)

weights ``diffinv.assets.locate("mnist-classifier")`` (SHA-256-pinned), loaded with
``weights_only=True`` and ``strict=True``. It was trained on 28x28 MNIST in [0, 1] normalised as
(u - 0.1307) / 0.3081 (ccexam/constants.py); it reaches 99.05% on the MNIST test split.

Frame convention: diffinv's digits are the 28x28 originals padded with 2 px of background on every
side to 32x32 (DESIGN.md). The classifier therefore sees the centre 28x28 crop ``[2:30, 2:30]`` of
the [0, 1] frame, i.e. exactly the original digit's pixels; 28x28 inputs are used as they are.
Restorations that put ink in the 2-px border are judged without it.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn

from diffinv import assets
from diffinv.checks import check_image
from diffinv.errors import ShapeError
from diffinv.metrics.frame import MetricArgumentError, as_device, check_pair, to_unit
from diffinv.metrics.perceptual import load_strict, torch_load_weights

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DIGIT_SIZE = 28
FRAME_SIZE = 32
PAD = (FRAME_SIZE - DIGIT_SIZE) // 2
CONFIDENCE = 0.9


class DigitClassifier(nn.Module):
    """The conv32-conv64-fc128-fc10 MNIST network (logits for (B, 1, 28, 28) normalised input)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = DIGIT_SIZE // 4
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, 10),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(z).flatten(1))


@lru_cache(maxsize=4)
def _load_cached(device: str) -> DigitClassifier:
    p = assets.locate("mnist-classifier")
    net = DigitClassifier()
    load_strict(net, torch_load_weights(p, "MNIST classifier weights"), f"MNIST classifier {p}")
    net.requires_grad_(False)
    return net.eval().to(device)


def load_digit_classifier(device: torch.device | str = "cpu") -> DigitClassifier:
    """The pretrained classifier on ``device`` (cached, frozen, eval mode)."""
    return _load_cached(as_device(device))


def classifier_input(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 32, 32) or (B, 1, 28, 28) images in [-1, 1] -> normalised (B, 1, 28, 28) input."""
    check_image(x, "x", channels=1)
    size = tuple(x.shape[-2:])
    if size == (FRAME_SIZE, FRAME_SIZE):
        x = x[..., PAD:PAD + DIGIT_SIZE, PAD:PAD + DIGIT_SIZE]
    elif size != (DIGIT_SIZE, DIGIT_SIZE):
        raise ShapeError(f"the digit classifier takes 32x32 padded frames or 28x28 digits; "
                         f"got {size[0]}x{size[1]}")
    return (to_unit(x.float()) - MNIST_MEAN) / MNIST_STD


def digit_logits(x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class logits (B, 10) of gray digit images in [-1, 1] (no gradients)."""
    z = classifier_input(x)
    if batch_size < 1:
        raise MetricArgumentError(f"batch_size must be >= 1; got {batch_size}")
    net = load_digit_classifier(x.device)
    with torch.no_grad():
        return torch.cat([net(z[i:i + batch_size]) for i in range(0, z.shape[0], batch_size)])


def digit_probabilities(x: torch.Tensor) -> torch.Tensor:
    """Class probabilities softmax(logits), shape (B, 10)."""
    return digit_logits(x).softmax(dim=1)


def predict_digits(x: torch.Tensor) -> torch.Tensor:
    """Predicted class argmax(logits), shape (B,), int64."""
    return digit_logits(x).argmax(dim=1)


def _check_labels(labels: torch.Tensor | list[int], n: int, device: torch.device) -> torch.Tensor:
    lab = torch.as_tensor(labels, device=device)
    if lab.shape != (n,):
        raise ShapeError(f"labels must have shape ({n},); got {tuple(lab.shape)}")
    if lab.dtype.is_floating_point or lab.dtype == torch.bool:
        raise MetricArgumentError(f"labels must be integers 0..9; got dtype {lab.dtype}")
    if ((lab < 0) | (lab > 9)).any():
        raise MetricArgumentError("labels must be integers 0..9")
    return lab.long()


def digit_correct(x: torch.Tensor, labels: torch.Tensor | list[int]) -> torch.Tensor:
    """Per-image 1.0 where the predicted class equals ``labels``, else 0.0; shape (B,)."""
    pred = predict_digits(x)
    return (pred == _check_labels(labels, x.shape[0], pred.device)).to(x.dtype)


def digit_accuracy(x: torch.Tensor, labels: torch.Tensor | list[int]) -> float:
    """Fraction of images classified as their label."""
    return float(digit_correct(x, labels).double().mean())


def digit_confident(x: torch.Tensor, threshold: float = CONFIDENCE) -> torch.Tensor:
    """Per-image 1.0 where the top class probability exceeds ``threshold``; shape (B,)."""
    if not 0.0 <= threshold < 1.0:
        raise MetricArgumentError(f"threshold must be in [0, 1); got {threshold}")
    return (digit_probabilities(x).amax(dim=1) > threshold).to(x.dtype)


def confident_fraction(x: torch.Tensor, threshold: float = CONFIDENCE) -> float:
    """Fraction of images whose top class probability exceeds ``threshold`` (default 0.9)."""
    return float(digit_confident(x, threshold).double().mean())


def digit_agreement(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image 1.0 where x and ref get the same predicted class; shape (B,)."""
    check_pair(x, ref)
    return (predict_digits(x) == predict_digits(ref)).to(x.dtype)
