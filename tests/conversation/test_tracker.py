"""Every tracker mode equals a naive loop over the documented formula, within 1e-5."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation import tracker as tracker_module
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings, distance_weights
from halo_client.frame import reduce_attention
from halo_client.messages import AttentionLayout

settings_strategy = st.builds(
    TrackerSettings,
    aggregation=st.sampled_from(["mean", "max", "last_layer", "weighted_layers"]),
    distance_mode=st.sampled_from(["none", "threshold", "linear", "logarithmic", "square_root"]),
    min_distance=st.integers(0, 30),
    distance_scale=st.floats(0.5, 50),
    accumulation=st.sampled_from(["additive", "none", "exponential"]),
    decay=st.floats(0, 0.05),
    boost=st.floats(0, 3),
)


def naive_weight(s: TrackerSettings, d: int) -> float:
    if s.distance_mode == "none":
        return 1.0
    if d < s.min_distance:
        return 0.0
    x = (d - s.min_distance) / s.distance_scale
    return {"threshold": 1.0, "linear": 1 + x, "logarithmic": 1 + math.log(1 + x),
            "square_root": 1 + math.sqrt(x)}[s.distance_mode]


def naive_update(s: TrackerSettings, scores: list[float], frame: np.ndarray) -> list[float]:
    layers, heads, ctx = frame.shape
    out = list(scores)
    for j in range(ctx):
        if s.aggregation == "mean":
            a = sum(float(frame[ly, h, j]) for ly in range(layers) for h in range(heads)) / (layers * heads)
        elif s.aggregation == "max":
            a = max(float(frame[ly, h, j]) for ly in range(layers) for h in range(heads))
        elif s.aggregation == "last_layer":
            a = sum(float(frame[layers - 1, h, j]) for h in range(heads)) / heads
        else:
            total = sum(range(1, layers + 1))
            a = sum((ly + 1) / total * sum(float(frame[ly, h, j]) for h in range(heads)) / heads
                    for ly in range(layers))
        c = s.boost * naive_weight(s, ctx - 1 - j) * a
        if s.accumulation == "additive":
            out[j] = max(0.0, out[j] + c - s.decay)
        elif s.accumulation == "none":
            out[j] = out[j] + c
        else:
            out[j] = out[j] * (1 - s.decay) + c
    return out


def random_frame(rng: np.random.Generator, layers: int, heads: int, ctx: int) -> np.ndarray:
    raw = rng.random((layers, heads, ctx)) ** 4
    frame: np.ndarray = (raw / raw.sum(-1, keepdims=True)).astype(np.float32)
    return frame


@settings(max_examples=200, deadline=None)
@given(settings_strategy, st.integers(1, 4), st.integers(1, 4), st.integers(1, 60), st.integers(0, 2**32 - 1),
       st.sampled_from([np.float32, np.float16]))
def test_vectorized_update_equals_the_naive_loop(s: TrackerSettings, layers: int, heads: int, ctx: int,
                                                 seed: int, dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(seed)
    tracker = AttentionTracker(s)
    n = ctx + 5
    brightness = rng.random(n).astype(np.float32)
    positions = np.sort(rng.choice(n, ctx, replace=False)).astype(np.int64)
    expected = brightness.astype(np.float64).tolist()
    for _ in range(3):
        frame = random_frame(rng, layers, heads, ctx).astype(dtype)
        naive = naive_update(s, [expected[p] for p in positions], frame)
        for p, v in zip(positions, naive, strict=True):
            expected[p] = v
        tracker.update(brightness, positions, frame)
    np.testing.assert_allclose(brightness, np.asarray(expected, np.float32), atol=1e-5, rtol=1e-5)


@settings(max_examples=100, deadline=None)
@given(settings_strategy, st.integers(0, 2**32 - 1))
def test_without_decay_scores_never_decrease(s: TrackerSettings, seed: int) -> None:
    s = s.model_copy(update={"accumulation": "none"})
    rng = np.random.default_rng(seed)
    tracker = AttentionTracker(s)
    brightness = rng.random(30).astype(np.float32)
    positions = np.arange(30)
    for _ in range(5):
        before = brightness.copy()
        tracker.update(brightness, positions, random_frame(rng, 2, 3, 30))
        assert (brightness >= before).all()


@settings(max_examples=100, deadline=None)
@given(settings_strategy)
def test_distance_weights_are_zero_inside_min_distance_and_non_decreasing(s: TrackerSettings) -> None:
    w = distance_weights(s, 300)
    assert (np.diff(w) >= 0).all()
    if s.distance_mode != "none":
        assert (w[: s.min_distance] == 0).all() and (w[s.min_distance :] >= 1).all()
    for d in (0, 1, s.min_distance, 17, 299):
        assert w[d] == pytest.approx(naive_weight(s, d), rel=1e-6)


def test_float16_frames_give_the_same_scores() -> None:
    rng = np.random.default_rng(0)
    frame = random_frame(rng, 4, 4, 200)
    a = np.ones(200, np.float32)
    b = np.ones(200, np.float32)
    tracker = AttentionTracker()
    tracker.update(a, np.arange(200), frame)
    tracker.update(b, np.arange(200), frame.astype(np.float16))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="positions"):
        AttentionTracker().update(np.ones(5, np.float32), np.arange(4), np.ones((1, 1, 5), np.float32) / 5)
    with pytest.raises(ValueError, match=r"\[layers, heads, ctx\]"):
        AttentionTracker().aggregate(np.ones((2, 5), np.float16))


AGGREGATIONS = ["mean", "max", "last_layer", "weighted_layers"]


def numpy_widened(frame: np.ndarray, aggregation: str) -> np.ndarray:
    """The aggregation on a float32 copy of the frame: what the float16 bit tricks must equal."""
    tracker = AttentionTracker(TrackerSettings(aggregation=aggregation))
    return tracker.aggregate(frame.astype(np.float32))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_float16_widening_is_exact_for_subnormals_and_extremes(aggregation: str) -> None:
    rng = np.random.default_rng(1)
    frame = (rng.random((3, 5, 300)) ** 12).astype(np.float16)  # many half subnormals (< 6.1e-5)
    frame[0, 0, :4] = [0.0, 1.0, 6e-8, 65504.0]  # zero, one, the smallest subnormal, the largest half
    assert (frame[(frame > 0) & (frame < 6.1e-5)]).size > 100
    # the bit arithmetic is what runs here (the exact path would pass this test trivially)
    assert tracker_module._half_head_sums(frame, range(3)) is not None
    assert tracker_module._half_max(frame) is not None
    got = AttentionTracker(TrackerSettings(aggregation=aggregation)).aggregate(frame)
    np.testing.assert_allclose(got, numpy_widened(frame, aggregation), rtol=1e-6, atol=0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("bad", [-0.25, np.inf, np.nan, -0.0])
def test_float16_values_no_probability_has_take_the_exact_path(aggregation: str, bad: float) -> None:
    frame = np.full((2, 3, 8), 0.125, np.float16)
    frame[-1, 1, 3] = bad
    got = AttentionTracker(TrackerSettings(aggregation=aggregation)).aggregate(frame)
    np.testing.assert_allclose(got, numpy_widened(frame, aggregation), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_float16_without_the_fast_path(aggregation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    frame = random_frame(rng, 4, 6, 50).astype(np.float16)
    expected = numpy_widened(frame, aggregation)
    tracker = AttentionTracker(TrackerSettings(aggregation=aggregation))
    strided = np.empty((4, 6, 100), np.float16)[:, :, ::2]  # not C-contiguous: no bit view
    strided[...] = frame
    np.testing.assert_allclose(tracker.aggregate(strided), expected, rtol=1e-6)
    big_endian = frame.astype(">f2")
    np.testing.assert_allclose(tracker.aggregate(big_endian), expected, rtol=1e-6)
    # denormals-are-zero switched on by some library: the bit trick would lose subnormals
    monkeypatch.setattr(tracker_module, "_DENORMAL_PROBE", np.zeros(2, np.float32))
    np.testing.assert_allclose(tracker.aggregate(frame), expected, rtol=1e-6)


@settings(max_examples=200, deadline=None)
@given(settings_strategy, st.integers(1, 6), st.integers(1, 6), st.integers(1, 80), st.integers(0, 2**32 - 1),
       st.sampled_from(["layer_stats", "model_stats"]))
def test_reduced_frames_give_the_same_brightness(s: TrackerSettings, layers: int, heads: int, ctx: int,
                                                 seed: int, layout: AttentionLayout) -> None:
    """Every aggregation is a function of statistics over heads: the server's reduced frame
    (api_spec F8) gives the brightness the full frame gives, to 1e-5."""
    if layout == "model_stats" and s.smallest_layout() == "layer_stats":
        layout = "layer_stats"  # this aggregation needs per-layer statistics
    rng = np.random.default_rng(seed)
    full, reduced = AttentionTracker(s), AttentionTracker(s)
    n = ctx + 3
    start = rng.random(n).astype(np.float32)
    a, b = start.copy(), start.copy()
    positions = np.sort(rng.choice(n, ctx, replace=False)).astype(np.int64)
    for _ in range(4):
        frame = random_frame(rng, layers, heads, ctx)
        full.update(a, positions, frame)
        reduced.update(b, positions, reduce_attention(frame, layout), layout)
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


def test_model_stats_cannot_serve_a_per_layer_aggregation() -> None:
    frame = reduce_attention(random_frame(np.random.default_rng(0), 3, 4, 5), "model_stats")
    for aggregation in ("last_layer", "weighted_layers"):
        tracker = AttentionTracker(TrackerSettings(aggregation=aggregation))
        assert tracker.settings.smallest_layout() == "layer_stats"
        with pytest.raises(ValueError, match="per-layer statistics"):
            tracker.aggregate(frame, "model_stats")
    assert TrackerSettings(aggregation="max").smallest_layout() == "model_stats"
