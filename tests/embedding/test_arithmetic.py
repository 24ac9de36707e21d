"""The encoders' pieces that need no model file: gelu's erf, and how texts are batched by length."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from halo_client.embedding import length_batches
from halo_client.embedding.bert import gelu


def test_gelu_is_the_exact_one_to_float32_rounding() -> None:
    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    exact = np.asarray([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    before = x.copy()
    got = gelu(x.reshape(5, -1)).reshape(-1)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() < 2e-6
    assert np.array_equal(x, before)  # worked in place, but not in its input


def test_a_short_text_is_not_padded_to_a_long_ones_width() -> None:
    # a message of 50 tokens and its names (4): two passes, not one of two rows of 50
    assert [b.tolist() for b in length_batches(np.asarray([50, 4]), 32)] == [[1], [0]]
    assert [b.tolist() for b in length_batches(np.asarray([12, 9, 20, 11]), 32)] == [[1, 3, 0, 2]]
    assert [b.tolist() for b in length_batches(np.asarray([5] * 5), 2)] == [[0, 1], [2, 3], [4]]
    assert length_batches(np.asarray([], np.int64), 32) == []


@given(st.lists(st.integers(1, 300), max_size=80), st.integers(1, 40))
def test_batches_cover_every_text_once_within_their_bounds(lengths: list[int], size: int) -> None:
    array = np.asarray(lengths, np.int64)
    batches = length_batches(array, size)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= b.size <= size
        assert array[b].max() <= 2 * array[b].min() + 8
