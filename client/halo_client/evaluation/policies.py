"""Pruning policies compared by the benchmark, all at sentence granularity.

Every policy sees the same conversation split into units (sentences, with the template tokens
of a message attached to it) and the same per-frame attention, reduced to one value per
context position (the mean over layers and heads). Each gives every unit a score; the pruner
then drops the lowest-scoring unprotected unit until the conversation fits the budget, the
same rule for all of them, so the policies differ only in what they believe matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Unit:
    """A prunable span of positions `[start, end)` in the conversation's token order."""

    start: int
    end: int
    protected: bool = False
    holds_fact: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start


class AttentionLog:
    """What the baselines need from the frames, accumulated as they stream.

    `accumulated[p]`: the sum over frames of the mean attention position p received (H2O's
    heavy-hitter score, no decay, no distance weighting). `last[p]`: the mean attention of the
    latest frame (TOVA's score: the newest query's view).
    """

    def __init__(self, capacity: int) -> None:
        self.accumulated = np.zeros(capacity, np.float64)
        self.last = np.zeros(capacity, np.float64)
        self.frames = 0

    def add(self, positions: npt.NDArray[np.int64], frame: npt.NDArray[np.floating]) -> None:
        """`frame`: `[layers, heads, ctx]`; column j is position `positions[j]`."""
        mean = frame.mean(axis=(0, 1), dtype=np.float64)
        self.accumulated[positions] += mean
        self.last[:] = 0.0
        self.last[positions] = mean
        self.frames += 1


def unit_scores(units: Sequence[Unit], per_position: FloatArray, reduce: str = "max") -> FloatArray:
    """One score per unit from per-position scores: its max (default) or mean."""
    starts = np.asarray([u.start for u in units], dtype=np.int64)
    ends = np.asarray([u.end for u in units], dtype=np.int64)
    if reduce == "mean":
        csum = np.concatenate([[0.0], np.cumsum(per_position)])
        return np.asarray((csum[ends] - csum[starts]) / np.maximum(ends - starts, 1), np.float64)
    if reduce == "max":
        return np.asarray([per_position[s:e].max() if e > s else 0.0
                           for s, e in zip(starts, ends, strict=True)], np.float64)
    raise ValueError(f"unknown reduction {reduce!r}: use 'max' or 'mean'")


def recency_scores(units: Sequence[Unit]) -> FloatArray:
    return np.asarray([u.end for u in units], np.float64)


def streaming_scores(units: Sequence[Unit], sinks: int = 4) -> FloatArray:
    """StreamingLLM-style: the first `sinks` units (attention sinks) outrank everything, then
    the newest."""
    scores = recency_scores(units)
    scores[: min(sinks, len(units))] = np.inf
    return scores


def random_scores(units: Sequence[Unit], seed: int) -> FloatArray:
    return np.random.default_rng(seed).random(len(units))


def gold_scores(units: Sequence[Unit]) -> FloatArray:
    """The upper bound: units holding planted facts outrank all, then the newest."""
    scores = recency_scores(units)
    scores[[i for i, u in enumerate(units) if u.holds_fact]] += 1e9
    return scores


def keep_within_budget(units: Sequence[Unit], scores: FloatArray, budget: int) -> npt.NDArray[np.bool_]:
    """Drop the lowest-scoring unprotected units until the kept size is at most `budget`.

    Ties break towards dropping the older unit; afterwards, dropped units that fit again are
    put back, highest score first. Returns which units are kept. If protected
    units alone exceed the budget, everything unprotected goes and the result is over budget.
    """
    keep = np.ones(len(units), dtype=bool)
    total = sum(u.size for u in units)
    order = sorted((i for i, u in enumerate(units) if not u.protected), key=lambda i: (scores[i], i))
    for i in order:
        if total <= budget:
            break
        keep[i] = False
        total -= units[i].size
    # Dropping a long unit can free more than needed: put back, best first, what still fits.
    for i in reversed(order):
        if not keep[i] and total + units[i].size <= budget:
            keep[i] = True
            total += units[i].size
    return keep
