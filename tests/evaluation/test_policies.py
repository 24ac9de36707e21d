"""Baseline policies: scores, the shared budget rule, and the attention log."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.evaluation.policies import (
    AttentionLog,
    Unit,
    gold_scores,
    keep_within_budget,
    random_scores,
    recency_scores,
    streaming_scores,
    unit_scores,
)

UNITS = [Unit(0, 5, protected=True), Unit(5, 9), Unit(9, 15, holds_fact=True), Unit(15, 20), Unit(20, 24)]


def kept(scores: np.ndarray, budget: int) -> list[int]:
    return [i for i, k in enumerate(keep_within_budget(UNITS, scores, budget)) if k]


def test_recency_keeps_the_newest() -> None:
    assert kept(recency_scores(UNITS), 14) == [0, 3, 4]
    assert kept(recency_scores(UNITS), 13) == [0, 1, 4]  # u1 fits again once u3 is gone


def test_streaming_keeps_sinks_and_newest() -> None:
    assert kept(streaming_scores(UNITS, sinks=2), 14) == [0, 1, 4]
    assert kept(streaming_scores(UNITS, sinks=2), 18) == [0, 1, 3, 4]


def test_gold_keeps_the_fact() -> None:
    assert kept(gold_scores(UNITS), 11) == [0, 2]


def test_random_is_seeded() -> None:
    np.testing.assert_array_equal(random_scores(UNITS, 3), random_scores(UNITS, 3))


def test_unit_scores_max_and_mean() -> None:
    per = np.arange(24, dtype=np.float64)
    np.testing.assert_array_equal(unit_scores(UNITS, per, "max"), [4, 8, 14, 19, 23])
    np.testing.assert_allclose(unit_scores(UNITS, per, "mean"), [2, 6.5, 11.5, 17, 21.5])


def test_attention_log_maps_columns_to_positions() -> None:
    log = AttentionLog(10)
    frame = np.zeros((2, 3, 4), np.float32)
    frame[:, :, 1] = 1.0
    log.add(np.array([0, 2, 5, 7]), frame)
    log.add(np.array([0, 2, 5, 7]), frame)
    assert log.accumulated[2] == 2.0 and log.accumulated.sum() == 2.0
    assert log.last[2] == 1.0 and log.frames == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=30),
       st.integers(0, 400), st.integers(0, 2**31))
def test_budget_rule(spans: list[tuple[int, bool]], budget: int, seed: int) -> None:
    units, start = [], 0
    for size, protected in spans:
        units.append(Unit(start, start + size, protected=protected))
        start += size
    keep = keep_within_budget(units, random_scores(units, seed), budget)
    protected_size = sum(u.size for u in units if u.protected)
    kept_size = sum(u.size for u, k in zip(units, keep, strict=True) if k)
    assert all(k for u, k in zip(units, keep, strict=True) if u.protected)
    assert kept_size <= max(budget, protected_size)
    # minimal: putting back any dropped unit would break the budget
    for u, k in zip(units, keep, strict=True):
        if not k:
            assert kept_size + u.size > budget
