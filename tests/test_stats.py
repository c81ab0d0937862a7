"""lipcore.stats: paired differences, their Student-t interval and the verdict, on hand-made tables."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lipcore import stats
from lipcore.stats import paired, verdict

# A hand-made table: PSNR of LIP and of a baseline on four (image, task, seed) pairs.
LIP = [30.0, 31.0, 32.0, 29.5]
BASE = [29.0, 30.5, 31.0, 29.0]


def test_hand_made_table():
    """Differences 1.0, 0.5, 1.0, 0.5: mean 0.75, sd sqrt(1/12), t(0.975, 3) = 3.182446."""
    p = paired(LIP, BASE)
    half = 3.182446305284263 * math.sqrt(1 / 12) / 2
    assert p.n == 4 and p.wins == 4
    assert p.mean == pytest.approx(0.75)
    assert (p.low, p.high) == (pytest.approx(0.75 - half), pytest.approx(0.75 + half))
    assert p.low == pytest.approx(0.290653, abs=1e-6)
    assert p.verdict == "better"


def test_interval_is_scipys_paired_t_interval():
    a = [28.1, 27.4, 30.2, 26.9, 29.9, 31.0]
    b = [27.9, 27.8, 29.5, 27.3, 29.0, 30.1]
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    p = paired(a, b)
    assert (p.low, p.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert p.verdict == "no difference"  # the interval holds 0


def test_swapping_the_sides_flips_the_verdict():
    assert paired(BASE, LIP).verdict == "worse"
    assert paired(BASE, LIP).mean == pytest.approx(-0.75)


@pytest.mark.parametrize(
    ("low", "high", "expected"), [(0.1, 0.5, "better"), (-0.5, -0.1, "worse"), (-0.1, 0.3, "no difference")]
)
def test_verdict_reads_the_interval(low, high, expected):
    assert verdict(low, high) == expected


def test_one_pair_gives_no_interval():
    p = paired([30.0], [29.0])
    assert p.verdict == "too few pairs" and math.isnan(p.low) and p.mean == 1.0


def test_equal_differences_have_a_zero_width_interval():
    assert paired([1.0, 2.0], [1.0, 2.0]).verdict == "no difference"
    assert paired([2.0, 3.0], [1.0, 2.0]).verdict == "better"


def test_mismatched_or_broken_pairs_are_refused():
    with pytest.raises(ValueError, match="pairs must match"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        paired([1.0, math.nan], [1.0, 2.0])


def test_detectable_difference_has_80_percent_power_by_simulation():
    """The difference `detectable` returns is found by the same t-test in 80% of simulated studies (normal
    differences, n pairs, that spread), and not at half of it: it is the design's minimal detectable effect."""
    rng = np.random.default_rng(0)
    for n, sd in ((6, 1.0), (18, 2.5)):
        delta = stats.detectable(sd, n)
        for true, expected in ((delta, 0.80), (delta / 2, None)):
            draws = rng.normal(true, sd, size=(20000, n))
            t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / np.sqrt(n))
            crit = scipy_stats.t.ppf(0.975, n - 1)
            found = float(np.mean(np.abs(t) > crit))
            if expected is not None:
                assert abs(found - expected) < 0.015, (n, sd, found)
            else:
                assert found < 0.5


def test_a_hand_made_table_of_pairs_gives_its_interval_and_detectable_difference():
    """Six pairs with differences 1, 2, 0, 3, 1, 5: mean 2, sd sqrt(3.2) = 1.789; the 95% t interval is
    2 +- 2.571 * 1.789 / sqrt(6) = [0.123, 3.877], and 80% power needs a true difference of 2.566 dB (noncentral t,
    5 degrees of freedom): 1.434 standard deviations, where a z-test would need (1.96 + 0.84) / sqrt(6) = 1.144."""
    a = [31.0, 30.0, 29.0, 33.0, 28.0, 35.0]
    b = [30.0, 28.0, 29.0, 30.0, 27.0, 30.0]
    p = stats.paired(a, b)
    assert p.n == 6 and p.mean == pytest.approx(2.0) and p.verdict == "better"
    assert (p.low, p.high) == pytest.approx((0.1225, 3.8775), abs=1e-3)
    assert p.detectable == pytest.approx(2.566, abs=2e-3)
    assert p.detectable / np.sqrt(3.2) > (1.96 + 0.8416) / np.sqrt(6)  # t's heavier tails need more than z's
    assert stats.paired([1.0], [0.0]).detectable != stats.paired([1.0], [0.0]).detectable  # nan: one pair
    assert stats.detectable(0.0, 5) == 0.0
