"""Paired comparisons: is method A better than method B on the same (image, task, seed) fits?

Mean +- std per method cannot say that: the spread between images dwarfs the difference between methods.
Pairing removes it. Each pair is one (image, task, seed) scored with both methods from the same theta_0, z
and noise stream; the statistic is the per-pair difference A - B, its mean and a 95% Student-t interval
over the pairs, mean +- t_{n-1, 0.975} * s / sqrt(n). The t interval (not a bootstrap) because n is small
(often 6-36 pairs): a percentile bootstrap of so few pairs is known to undercover, while t only needs the
mean difference to be roughly normal. The verdict reads the interval: 'better' when it lies above 0,
'worse' when below, 'no difference' when it holds 0.

'No difference' is not 'equal': each comparison also gives the smallest true difference its design could
detect (`detectable`): the difference that the same two-sided paired t-test, over the same number of pairs with
the same spread, would find with 80% power (the noncentral t). A 'no difference' with a detectable difference of
3 dB says the study could not have shown a 1 dB effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import optimize as _scipy_optimize
from scipy import stats as _scipy_stats

LEVEL = 0.95
POWER = 0.8
VERDICTS = ("better", "worse", "no difference", "too few pairs")


@dataclass(frozen=True)
class Paired:
    """A - B over n pairs: mean difference and its two-sided `level` Student-t interval (dB for PSNR)."""

    n: int
    mean: float
    low: float
    high: float
    verdict: str  # one of VERDICTS
    wins: int  # pairs where A > B
    level: float = LEVEL
    detectable: float = math.nan  # the |A - B| this design detects with POWER (see `detectable`); nan below 2 pairs


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """Compare A with B pair by pair (a[i] and b[i] are the same image, task and seed).

    Fewer than 2 pairs give no interval (low = high = nan) and the verdict 'too few pairs'; n equal
    differences give a zero-width interval (a tie is 'no difference', otherwise the sign decides).
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} against {len(b)} values: the pairs must match one to one")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    if any(not math.isfinite(d) for d in diffs):
        raise ValueError("paired comparison: a score is NaN or infinite; check the fits that produced it")
    n = len(diffs)
    wins = sum(d > 0 for d in diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return Paired(n, mean, math.nan, math.nan, "too few pairs", wins, level)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return Paired(n, mean, low, high, verdict(low, high), wins, level, detectable(sd, n, level))


def verdict(low: float, high: float) -> str:
    """'better' when the interval lies above 0, 'worse' below, else 'no difference'."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no difference"


def detectable(sd: float, n: int, level: float = LEVEL, power: float = POWER) -> float:
    """The smallest true mean difference that a two-sided paired t-test at `level`, over n pairs whose differences
    spread by `sd`, finds with probability `power` (the minimal detectable effect, in the units of sd).

    The test rejects when |t| > t_crit; with a true difference delta, t follows the noncentral t with n - 1 degrees
    of freedom and noncentrality delta / (sd / sqrt(n)). Solved for the delta whose power is `power` (brentq on a
    bracket known to hold it). nan with fewer than 2 pairs; 0 when sd is 0 (any difference shows).
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    crit = float(_scipy_stats.t.ppf(0.5 + level / 2, df))
    se = sd / math.sqrt(n)

    def short(delta: float) -> float:
        nc = delta / se
        upper = float(_scipy_stats.nct.sf(crit, df, nc))
        lower = float(_scipy_stats.nct.sf(crit, df, -nc))  # P(t < -crit) by symmetry; scipy's cdf there can be nan
        return upper + (lower if math.isfinite(lower) else 0.0) - power

    high = (crit + float(_scipy_stats.norm.ppf(power))) * se
    while short(high) < 0:  # widen the bracket until it holds the answer (few doublings, even at n = 2)
        high *= 2
    return float(_scipy_optimize.brentq(short, 0.0, high, xtol=1e-10 * se))
