"""The bootstrap over conversations."""

from __future__ import annotations

import numpy as np

from halo_client.evaluation.stats import bootstrap, paired_difference, ratio_of_means


def test_the_interval_holds_the_mean_and_narrows_with_more_conversations() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.normal(1.0, 1.0, 10), rng.normal(1.0, 1.0, 400)
    a, b = bootstrap(few.tolist()), bootstrap(many.tolist())
    assert a.low < a.mean < a.high and b.low < b.mean < b.high
    assert b.high - b.low < a.high - a.low
    assert b.low < 1.0 < b.high and b.n == 400
    same = bootstrap([0.5] * 7)
    assert same.low == same.mean == same.high == 0.5
    assert bootstrap([]).n == 0


def test_paired_difference_sees_what_unpaired_intervals_hide() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 5.0, 40)  # conversations differ a lot, the policies by a little
    a = {f"c{i}": float(v) for i, v in enumerate(base)}
    b = {f"c{i}": float(v) + 0.5 for i, v in enumerate(base)}
    assert bootstrap(list(a.values())).overlaps(bootstrap(list(b.values())))
    diff = paired_difference(a, b)
    assert diff.high < 0 and abs(diff.mean + 0.5) < 1e-9
    assert paired_difference(a, {"other": 1.0}).n == 0  # only shared conversations count


def test_ratio_of_means() -> None:
    recall = {"a": 0.5, "b": 1.0, "c": 0.75}
    full = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    ratio = ratio_of_means(recall, full)
    assert ratio.mean == 0.75 and ratio.low <= 0.75 <= ratio.high and ratio.n == 3
    assert np.isnan(ratio_of_means(recall, {"a": 0.0}).mean)  # nothing to divide by
