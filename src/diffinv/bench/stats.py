"""Summary statistics of a table cell, with 95% intervals, in pure Python (no SciPy at run time).

Mean over n replicates x_1..x_n (images): x_bar = (1/n) sum x_i, s^2 = sum (x_i - x_bar)^2 / (n-1),
interval x_bar -/+ t_{n-1}(0.975) s / sqrt(n), where t_nu(p) is the Student-t quantile. The t CDF
for t >= 0 is F(t) = 1 - I_{nu / (nu + t^2)}(nu/2, 1/2) / 2 with I_x(a, b) the regularised
incomplete beta function, evaluated by its continued fraction (modified Lentz); the quantile is
found by bisection.

Median of n timings: the distribution-free interval [x_(k), x_(n+1-k)] between order statistics,
with k the largest rank such that P(Bin(n, 1/2) <= k - 1) <= 0.025; its coverage
1 - 2 P(Bin(n, 1/2) <= k - 1) is at least 95% for any continuous distribution. It needs n >= 6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0, x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t CDF with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Student-t quantile: the t with ``t_cdf(t, df) == p`` (bisection to machine precision)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_ppf needs 0 < p < 1 and df > 0; got p={p}, df={df}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Summary:
    """A cell's statistic: ``center`` (mean or median) with a 95% interval [low, high] over n.

    ``low``/``high`` are NaN where no interval exists (n < 2 for the mean, n < 6 for the median).
    """

    statistic: str
    center: float
    low: float
    high: float
    n: int


NAN = float("nan")


def mean_interval(xs: Sequence[float], level: float = 0.95) -> Summary:
    """Mean with the two-sided Student-t interval at ``level``."""
    n = len(xs)
    if n == 0:
        return Summary("mean", NAN, NAN, NAN, 0)
    m = math.fsum(xs) / n
    if n < 2:
        return Summary("mean", m, NAN, NAN, 1)
    s = math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))
    hw = t_ppf(0.5 + level / 2.0, n - 1) * s / math.sqrt(n)
    return Summary("mean", m, m - hw, m + hw, n)


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Bin(n, 1/2) <= k)."""
    return math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0**n


def median_interval(xs: Sequence[float], level: float = 0.95) -> Summary:
    """Median with the distribution-free order-statistic interval at (at least) ``level``."""
    n = len(xs)
    if n == 0:
        return Summary("median", NAN, NAN, NAN, 0)
    s = sorted(xs)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    alpha = (1.0 - level) / 2.0
    k = 0
    while k + 1 <= (n + 1) // 2 and _binom_cdf_half(k, n) <= alpha:
        k += 1  # rank k (1-based) keeps P(B <= k - 1) <= alpha
    if k == 0:
        return Summary("median", med, NAN, NAN, n)
    return Summary("median", med, s[k - 1], s[n - k], n)


def summarize(xs: Sequence[float], statistic: str) -> Summary:
    if statistic == "mean":
        return mean_interval(xs)
    if statistic == "median":
        return median_interval(xs)
    raise ValueError(f"unknown statistic {statistic!r}")
