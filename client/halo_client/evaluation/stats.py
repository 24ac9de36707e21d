"""Confidence intervals for the benchmark: a percentile bootstrap over conversations.

Conversations are the independent units (the steps of one conversation share its history and
its pruning), so every measure is first averaged within each conversation, then conversations
are resampled with replacement. A paired comparison resamples the same conversations for both
policies, which is what "A beats B" needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    #: conversations it averages
    n: int

    def overlaps(self, other: Estimate) -> bool:
        return self.low <= other.high and other.low <= self.high


def bootstrap(per_conversation: Sequence[float], *, resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> Estimate:
    """The mean over conversations with its percentile bootstrap interval."""
    values = np.asarray(per_conversation, np.float64)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(values.mean()), float(low), float(high), int(values.size))


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 2000,
                      seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of a - b over the conversations both have, with its bootstrap interval."""
    shared = sorted(set(a) & set(b))
    diffs: npt.NDArray[np.float64] = np.asarray([a[k] - b[k] for k in shared], np.float64)
    return bootstrap(diffs.tolist(), resamples=resamples, seed=seed, level=level)


def ratio_of_means(a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> Estimate:
    """mean(a) / mean(b) over the conversations both have, resampled together."""
    shared = sorted(set(a) & set(b))
    x = np.asarray([a[k] for k in shared], np.float64)
    y = np.asarray([b[k] for k in shared], np.float64)
    if not shared or y.sum() == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(shared))
    picks = np.random.default_rng(seed).integers(0, len(shared), (resamples, len(shared)))
    below = y[picks].mean(axis=1)
    ratios = x[picks].mean(axis=1)[below > 0] / below[below > 0]  # a resample with nothing to divide by says nothing
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return Estimate(float(x.mean() / y.mean()), float(low), float(high), len(shared))


def interval(estimate: Estimate | None, digits: int = 3) -> str:
    """`mean [low, high]`, or nothing for no estimate."""
    if estimate is None:
        return ""
    return f"{estimate.mean:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"
