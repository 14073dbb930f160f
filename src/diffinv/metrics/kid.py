r"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel, Gretton: "Demystifying MMD GANs",
ICLR 2018): the unbiased squared MMD between two sets of Inception features under the cubic
polynomial kernel

.. math::

    k(a, b) = \Big(\frac{a^\top b}{d} + 1\Big)^3, \qquad
    \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} k(x_i, x_j)
    + \frac{1}{n(n-1)} \sum_{i \ne j} k(y_i, y_j) - \frac{2}{mn} \sum_{i, j} k(x_i, y_j),

with ``d`` the feature dimension (2048 for Inception's pool features). Unlike FID, the estimate
is unbiased at any sample size, so it is the score to compare priors with at a few thousand
samples; its spread over random subsets (the paper's protocol: many subsets of ``m`` samples,
mean and standard deviation) says how much of a difference between two priors is sampling noise.

:func:`kid_subsets` gives the per-subset estimates; with the same ``seed`` two calls draw the same
subset indices, so for two priors whose sample ``i`` comes from the same seed the per-subset
differences are paired. The features are those of :func:`diffinv.metrics.fid.inception_features`.
"""

from __future__ import annotations

import torch

from diffinv.errors import ShapeError
from diffinv.metrics.frame import MetricArgumentError


def _check(features: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] < 2:
        got = (tuple(features.shape) if isinstance(features, torch.Tensor)
               else type(features).__name__)
        raise ShapeError(f"{name} must be an (N >= 2, D) feature matrix, got {got}")
    if not torch.isfinite(features).all():
        raise ShapeError(f"{name} holds NaN or Inf")
    return features.double()


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased squared MMD of the module docstring between feature sets ``x`` (m, d) and
    ``y`` (n, d), m, n >= 2, under the cubic polynomial kernel."""
    x, y = _check(x, "x"), _check(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx = (x @ x.T / d + 1).pow(3)
    kyy = (y @ y.T / d + 1).pow(3)
    kxy = (x @ y.T / d + 1).pow(3)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_subsets(samples: torch.Tensor, reference: torch.Tensor, *, subset_size: int = 1000,
                subsets: int = 100, seed: int = 0) -> torch.Tensor:
    """KID of ``subsets`` random subsets: each draws ``subset_size`` samples and as many
    reference features without replacement (generator seeded with ``seed``); returns the
    (subsets,) float64 estimates. The same seed and sizes draw the same indices, whatever the
    features."""
    samples, reference = _check(samples, "samples"), _check(reference, "reference")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise MetricArgumentError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise MetricArgumentError(f"subsets must be an integer >= 1, got {subsets!r}")
    if subset_size > min(len(samples), len(reference)):
        raise MetricArgumentError(f"subset_size {subset_size} exceeds the samples ({len(samples)}) "
                                  f"or the reference ({len(reference)})")
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        i = torch.randperm(len(samples), generator=g)[:subset_size]
        j = torch.randperm(len(reference), generator=g)[:subset_size]
        out[s] = mmd2_unbiased(samples[i], reference[j])
    return out
