"""The heat scale: sinks cannot flatten it, and content spreads over the levels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from halo_client.conversation.state import ConversationState
from halo_client.display.scale import SCALE_MODES, ScaleMode, conversation_levels, heat_scale


def _chat_with_a_sink(rng: np.random.Generator) -> ConversationState:
    """System prompt, then user content; the first template token gets the sink's brightness."""
    state = ConversationState()
    words = [(10 + i, f" w{i}".encode()) for i in range(40)]
    state.add_message("system", [(5, b"Sys.")], [(1, b"<|im_start|>"), (6, b"system\n")], [(2, b"<|im_end|>")])
    state.add_message("user", words, [(1, b"<|im_start|>"), (7, b"user\n")], [(2, b"<|im_end|>")])
    state.brightness[:] = rng.lognormal(0.0, 0.6, len(state)).astype(np.float32)
    state.brightness[0] = 500.0  # the attention sink
    return state


@pytest.mark.parametrize("mode", SCALE_MODES)
def test_the_sink_does_not_flatten_the_content(mode: ScaleMode) -> None:
    state = _chat_with_a_sink(np.random.default_rng(0))
    positions = state.active_positions()
    levels, scale = conversation_levels(state, positions, mode)
    content = ~state.column("template") & (state.column("role") == 1)
    assert levels[0] == 1.0  # the sink is drawn, at the top, clipped
    assert scale.high < 500.0 and scale.count == int(content.sum())
    # content spreads over the scale: not 95 % of it in the bottom fifth, as a scale to the sink had
    assert np.mean(levels[content] < 0.2) < 0.5
    assert levels[content].max() - levels[content].min() > 0.6


@given(hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(0, 1e4, width=32)),
       st.sampled_from(SCALE_MODES))
def test_levels_are_in_range_and_keep_the_order(values: np.ndarray, mode: ScaleMode) -> None:
    scale = heat_scale(values, np.ones(values.shape, bool), mode)
    levels = scale.levels(values)
    assert ((levels >= 0) & (levels <= 1)).all()
    order = np.argsort(values, kind="stable")
    assert (np.diff(levels[order]) >= 0).all()  # brighter is never drawn dimmer


def test_percentile_uses_every_level_equally() -> None:
    values = np.random.default_rng(1).lognormal(0, 2, 1000)
    levels = heat_scale(values, np.ones(1000, bool), "percentile").levels(values)
    counts = np.histogram(levels, bins=5, range=(0, 1))[0]
    assert counts.min() > 150  # ~200 each: differences among ordinary content stay visible


def test_empty_and_flat_inputs() -> None:
    for mode in SCALE_MODES:
        assert heat_scale(np.zeros(0), np.zeros(0, bool), mode).levels(np.ones(3)).shape == (3,)
        flat = heat_scale(np.ones(4), np.ones(4, bool), mode).levels(np.ones(4))
        assert ((flat >= 0) & (flat <= 1)).all()
    assert "percentile" in heat_scale(np.arange(5.0), np.ones(5, bool)).legend()


def test_percentile_levels_are_each_values_mid_rank_in_any_order() -> None:
    # the levels are searched in sorted order for speed: the same as counting for each value
    rng = np.random.default_rng(7)
    for n in (1, 2, 9000):
        values = np.round(rng.random(n) * 4, 2)  # ties included
        scale = heat_scale(values, rng.random(n) < 0.7, "percentile")
        ordered = scale.ordered
        expected = np.array([(np.count_nonzero(ordered < v) + np.count_nonzero(ordered <= v)) / (2 * ordered.size)
                             for v in values])
        np.testing.assert_array_equal(scale.levels(values), expected.astype(np.float32))
