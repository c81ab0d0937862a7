"""lipcore.stats: paired differences, their Student-t interval and the verdict, on hand-made tables."""

import math

import pytest
from scipy import stats as scipy_stats

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
