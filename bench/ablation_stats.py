"""The statistics of the ablation grid (bench/ablation.py): paired differences over seeds and their t intervals.

Every column of the grid is trained with the same seeds as full BSR, so seed k of a column and seed k of full BSR
share their initial weights' random stream and the sampler's: the difference per seed removes what the seeds
share, and its spread over seeds is what an interval must cover. The interval is the paired t interval,
mean(d) +/- t_{n-1, (1+c)/2} * sd(d) / sqrt(n), with sd the sample standard deviation (n - 1 in the denominator);
with three seeds t is 4.30, so an interval is wide unless the seeds agree closely.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """The mean of paired differences (column - reference, dB) and its confidence interval."""

    mean: float
    low: float
    high: float
    sd: float
    """The sample standard deviation of the per-seed differences (0 with one seed)."""
    n: int

    @property
    def excludes_zero(self) -> bool:
        """True when the interval says the column differs from the reference at this confidence."""
        return self.low > 0 or self.high < 0

    def format(self) -> str:
        """`-0.05 [-0.09, -0.01]`; one seed has no interval: `-0.05 (1 seed)`."""
        if self.n < 2:
            return f"{self.mean:+.3f} (1 seed)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t with df degrees of freedom (scipy's, which the test extra installs)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_interval(column: list[float], reference: list[float], confidence: float = 0.95) -> Interval:
    """The paired t interval of mean(column[k] - reference[k]) over seeds k.

    Both lists are ordered by seed and equally long; with one seed the interval is the point itself (and says
    so), since one difference has no spread to measure.
    """
    if len(column) != len(reference) or not column:
        raise ValueError(f"paired values need the same seeds on both sides, got {len(column)} and {len(reference)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = [c - r for c, r in zip(column, reference)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n == 1:
        return Interval(mean, mean, mean, 0.0, 1)
    sd = statistics.stdev(diffs)
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def seed_spread(values: list[float]) -> float:
    """The sample standard deviation over seeds of one column's PSNR (0 with one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def resolvable_effect(sd_diff: float, n: int, confidence: float = 0.95) -> float:
    """The half-width of the paired interval for n seeds when the per-seed differences spread by sd_diff: an
    effect larger than this would exclude zero (about; the spread itself is estimated)."""
    if n < 2:
        return math.inf
    return t_quantile((1 + confidence) / 2, n - 1) * sd_diff / math.sqrt(n)
