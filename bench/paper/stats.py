"""Small statistics for the quality tables (no SciPy on the build machine): Welch's two-sample
t-test and its confidence interval, with Student's t distribution from the regularised
incomplete beta function."""

import math
import statistics


def _beta_continued_fraction(a, b, x, eps=1e-14, max_terms=500):
    # The continued fraction of I_x(a, b) (modified Lentz): converges fast for x < (a+1)/(a+b+2).
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def incomplete_beta(a, b, x):
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) +
                 b * math.log1p(-x))
    # Use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df may be fractional)."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p, df):
    """The t with t_cdf(t, df) = p, 0 < p < 1, by bisection (monotone, so always converges)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p ({p}) must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def welch(a, b, confidence=0.95):
    """Welch's test of mean(a) - mean(b) for two samples of >= 2 values each: returns
    dict(diff, t, df, lo, hi, p) — the difference, its t statistic, Welch–Satterthwaite degrees
    of freedom, the two-sided confidence interval and the two-sided p-value. None when either
    sample has fewer than two values or both have zero variance."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    t = diff / se
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    p = 2.0 * (1.0 - t_cdf(abs(t), df))
    return dict(diff=diff, t=t, df=df, lo=diff - half, hi=diff + half, p=p)
