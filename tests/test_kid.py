"""Kernel Inception Distance: the unbiased MMD^2 estimator against a brute-force sum, zero in
expectation for two samples of one distribution, positive for different ones, paired subsets."""

from __future__ import annotations

import pytest
import torch

from diffinv.errors import ShapeError
from diffinv.metrics.frame import MetricArgumentError
from diffinv.metrics.kid import kid_subsets, mmd2_unbiased


def _brute(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_sum_over_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(9, 5, generator=g, dtype=torch.float64) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(_brute(x, y), rel=1e-10, abs=1e-12)


def test_mmd2_is_unbiased_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(1)
    same = torch.tensor([mmd2_unbiased(torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g))
                         for _ in range(400)], dtype=torch.float64)
    se = same.std() / len(same) ** 0.5
    assert abs(same.mean()) < 3.5 * se  # zero in expectation (the biased V-statistic is not)
    shifted = [mmd2_unbiased(torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g) + 1.0)
               for _ in range(50)]
    assert torch.tensor(shifted).mean() > 10 * se


def test_subsets_are_drawn_by_the_seed_so_two_priors_pair():
    g = torch.Generator().manual_seed(2)
    a, b, ref = (torch.randn(30, 4, generator=g) for _ in range(3))
    ka = kid_subsets(a, ref, subset_size=10, subsets=5, seed=3)
    kb = kid_subsets(b, ref, subset_size=10, subsets=5, seed=3)
    g2 = torch.Generator().manual_seed(3)
    for s in range(5):  # the same indices for both: the difference is the subset's own
        i, j = torch.randperm(30, generator=g2)[:10], torch.randperm(30, generator=g2)[:10]
        own = mmd2_unbiased(a[i], ref[j]) - mmd2_unbiased(b[i], ref[j])
        assert ka[s] - kb[s] == pytest.approx(own, abs=1e-12)
    assert not torch.equal(ka, kid_subsets(a, ref, subset_size=10, subsets=5, seed=4))


def test_bad_input_is_refused():
    x = torch.randn(10, 4)
    with pytest.raises(ShapeError):
        mmd2_unbiased(x, torch.randn(10, 3))
    with pytest.raises(ShapeError):
        mmd2_unbiased(x[:1], x)
    with pytest.raises(ShapeError):
        mmd2_unbiased(torch.full((3, 4), float("nan")), x)
    with pytest.raises(MetricArgumentError):
        kid_subsets(x, x, subset_size=11)
    with pytest.raises(MetricArgumentError):
        kid_subsets(x, x, subset_size=5, subsets=0)
