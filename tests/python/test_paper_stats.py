"""bench/paper/stats.py against textbook values of Student's t and a hand-worked Welch test."""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench", "paper"))
import stats  # noqa: E402


def test_t_quantiles_match_tables():
    # Two-sided 95% critical values from standard t tables; df = 1 is exactly 12.7062.
    for df, value in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)]:
        assert abs(stats.t_quantile(0.975, df) - value) < 5e-4, df
    assert abs(stats.t_quantile(0.975, 1e6) - 1.95996) < 1e-3  # the normal limit
    assert stats.t_quantile(0.025, 4) == -stats.t_quantile(0.975, 4)


def test_t_cdf_is_exact_for_one_and_two_degrees():
    for t in (-3.0, -0.5, 0.0, 0.7, 2.5):
        cauchy = 0.5 + math.atan(t) / math.pi  # df = 1
        two = 0.5 + t / (2 * math.sqrt(2 + t * t))  # df = 2
        assert abs(stats.t_cdf(t, 1) - cauchy) < 1e-10
        assert abs(stats.t_cdf(t, 2) - two) < 1e-10


def test_welch_by_hand():
    a, b = [4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0]
    r = stats.welch(a, b)
    va, vb = 1.0 / 3, (5.0 / 3) / 4  # sample variances 1 and 5/3, over n
    se = math.sqrt(va + vb)
    assert abs(r["diff"] - 2.5) < 1e-12
    assert abs(r["t"] - 2.5 / se) < 1e-12
    assert abs(r["df"] - (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)) < 1e-12
    half = stats.t_quantile(0.975, r["df"]) * se
    assert abs(r["lo"] - (2.5 - half)) < 1e-9 and abs(r["hi"] - (2.5 + half)) < 1e-9
    assert 0 < r["p"] < 0.05
    assert stats.welch([1.0], b) is None and stats.welch([1.0, 1.0], [2.0, 2.0]) is None
