"""The tooltip's attention figures: the latest token's attention and each token's peak."""

from __future__ import annotations

import numpy as np

from halo_client.ui.token_attention import TokenAttention


def test_latest_and_peak_follow_the_frames() -> None:
    seen = TokenAttention()
    assert seen.get(0).peak is None
    seen.observe(np.array([0, 1, 2], np.int64), np.array([0.5, 0.2, 0.3]), source=3)
    seen.observe(np.array([0, 2, 3], np.int64), np.array([0.1, 0.6, 0.3]), source=4)  # 1 was pruned
    assert seen.get(0).latest == np.float32(0.1) and seen.get(0).peak == 0.5 and seen.get(0).peak_from == 3
    assert seen.get(1).latest is None and seen.get(1).peak == np.float32(0.2)  # not in the latest context
    assert seen.get(2).peak == np.float32(0.6) and seen.get(2).peak_from == 4
    seen.forget_from(4)  # the reply from position 4 on was discarded
    assert seen.get(2).peak is None and seen.get(0).peak_from == 3
    assert seen.latest_source == -1 and seen.get(0).latest is None


def test_it_grows_with_the_conversation() -> None:
    seen = TokenAttention()
    seen.observe(np.arange(5000, dtype=np.int64), np.full(5000, 0.0002), source=5000)
    assert seen.get(4999).latest is not None and seen.get(6000).peak is None


def test_the_table_gives_every_positions_peak_at_once() -> None:
    """The token dictionary's columns: the same numbers as `get`, for positions never seen too."""
    seen = TokenAttention()
    seen.observe(np.array([0, 1, 2], np.int64), np.array([0.5, 0.2, 0.3]), source=3)
    seen.observe(np.array([0, 2, 3], np.int64), np.array([0.1, 0.6, 0.3]), source=4)
    peak, source = seen.table(6)
    for p in range(6):
        one = seen.get(p)
        assert (one.peak is None and np.isnan(peak[p]) and source[p] == -1) or \
            (peak[p] == np.float32(one.peak) and source[p] == one.peak_from)
    assert source.tolist() == [3, 3, 4, 4, -1, -1]
