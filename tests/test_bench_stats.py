"""Cell statistics of the benchmark report against SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from diffinv.bench.report import format_summary
from diffinv.bench.stats import Summary, betainc, mean_interval, median_interval, t_cdf, t_ppf


@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 9, 29, 49, 199, 1e4])
def test_t_quantiles_and_cdf_match_scipy(df):
    for p in (0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.0005, 0.025):
        assert t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-12)
    for t in (-30.0, -2.0, -0.1, 0.0, 0.7, 2.5, 40.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-14)


def test_incomplete_beta_matches_scipy():
    rng = np.random.default_rng(0)
    for a, b, x in zip(rng.uniform(0.1, 60, 300), rng.uniform(0.1, 60, 300), rng.uniform(0, 1, 300),
                       strict=True):
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), abs=1e-12)


def test_mean_interval_is_the_student_t_interval():
    rng = np.random.default_rng(1)
    for n in (2, 3, 7, 50):
        xs = rng.normal(30.0, 2.0, n).tolist()
        s = mean_interval(xs)
        m = sum(xs) / n
        hw = stats.t.ppf(0.975, n - 1) * np.std(xs, ddof=1) / math.sqrt(n)
        assert (s.center, s.n) == (pytest.approx(m, rel=1e-14), n)
        assert s.low == pytest.approx(m - hw, rel=1e-10)
        assert s.high == pytest.approx(m + hw, rel=1e-10)
    one = mean_interval([4.0])
    assert one.center == 4.0 and math.isnan(one.low) and one.n == 1
    assert mean_interval([]).n == 0


def test_median_interval_order_statistics_have_95_percent_coverage():
    rng = np.random.default_rng(2)
    for n in (6, 7, 10, 20, 37, 100):
        xs = rng.exponential(1.0, n).tolist()
        s = median_interval(xs)
        srt = sorted(xs)
        k = srt.index(s.low) + 1  # 1-based rank of the lower end; the upper end is rank n + 1 - k
        assert s.high == srt[n - k] and s.center == pytest.approx(np.median(xs))
        # the largest k whose two-sided miss probability 2 P(Bin(n, 1/2) <= k - 1) is <= 5%
        assert 2 * stats.binom.cdf(k - 1, n, 0.5) <= 0.05 < 2 * stats.binom.cdf(k, n, 0.5)
    assert math.isnan(median_interval([1.0, 2.0, 3.0, 4.0, 5.0]).low)  # n < 6: none exists


def test_formatting_shows_the_interval_to_two_significant_digits():
    assert format_summary(Summary("mean", 24.3127, 23.79, 24.8354, 50)) == "24.31 ± 0.52"
    assert format_summary(Summary("mean", 1000.0, 1000.0, 1000.0, 50)) == "1000"
    assert format_summary(Summary("median", 1.234, 1.2011, 1.3102, 20)) == "1.234 [1.201, 1.310]"
    assert format_summary(Summary("mean", 0.0, math.nan, math.nan, 0)) == "–"
