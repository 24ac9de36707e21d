r"""`AttentionTracker`: brightness, the model's accumulated, decayed, distance-weighted attention.

For each frame `A[l, h, j]` (layer, query head, column) of a generated token, in one
vectorized pass:

1. **Aggregate** over layers and heads into `a[j]`:
   - `mean` (default): $a_j = \frac{1}{LH}\sum_{l,h} A_{lhj}$
   - `max`: $a_j = \max_{l,h} A_{lhj}$
   - `last_layer`: $a_j = \frac{1}{H}\sum_h A_{L-1,h,j}$
   - `weighted_layers`: later layers weigh more, linearly with depth:
     $a_j = \sum_l w_l \frac{1}{H}\sum_h A_{lhj}$ with $w_l = \frac{l+1}{\sum_k (k+1)}$.
2. **Distance weight**: the query sits at column `ctx - 1`, so column `j` is `d = ctx - 1 - j`
   tokens back. With `m = min_distance` (default 0), `s = distance_scale`
   (default 10) and `x = d - m`:
   $w(d) = 0$ for $d < m$ (local attention to the sentence being written does not count), and
   for $d \ge m$: `threshold` 1, `linear` $1 + x/s$, `logarithmic` (default) $1 + \ln(1 + x/s)$,
   `square_root` $1 + \sqrt{x/s}$. Every weight is non-decreasing in `d`: attention that
   reaches far back is the evidence that a token is still used. Mode `none` weights every
   column 1 (no distance filter at all).
3. **Accumulate** into the brightness `b` of each column's position:
   - `additive` (default; `decay` defaults to 0):
     $b \leftarrow \max(0,\ b + \text{boost}\cdot w\,a - \text{decay})$ (floored at 0 so that a
     long-ignored token is not buried so deep that renewed attention could not lift it again)
   - `none`: $b \leftarrow b + \text{boost}\cdot w\,a$ (no decay)
   - `exponential`: $b \leftarrow b\,(1 - \text{decay}) + \text{boost}\cdot w\,a$

Every aggregation is a function of per-layer statistics over heads, so the tracker also takes
frames in the reduced layouts of api_spec (F8) and gives the same brightness from them:
`mean` and `max` need only `model_stats` (`[1, 2, ctx]`), `last_layer` and `weighted_layers`
need `layer_stats` (`[layers, 2, ctx]`); `TrackerSettings.smallest_layout()` says which, so a chat
asks the server for no more than that.

Only the columns of the frame are touched: a pruned token (not in the request) keeps its
score, frozen, until it is restored. float16 frames are never copied to float32 as a whole:
each half is widened exactly by bit arithmetic, a layer at a time (`_half_head_sums`).

New tokens start "bright": at the mean brightness of the conversation's active content, and at
least `initial_brightness` (default 1.0). A token has not yet been looked at when it arrives, so
it needs a grace period: starting level with the average, it is not the first thing a prune
takes. How the defaults were chosen is in docs/pruning.md.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from halo_client.messages import AttentionLayout

Aggregation = Literal["mean", "max", "last_layer", "weighted_layers"]
DistanceMode = Literal["none", "threshold", "linear", "logarithmic", "square_root"]
Accumulation = Literal["additive", "none", "exponential"]


class TrackerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregation: Aggregation = "mean"
    distance_mode: DistanceMode = "logarithmic"
    # defaults chosen on the pruning benchmark's tuning split (docs/pruning.md)
    min_distance: int = Field(0, ge=0)
    distance_scale: float = Field(10.0, gt=0)
    accumulation: Accumulation = "additive"
    decay: float = Field(0.0, ge=0, le=1)
    boost: float = Field(1.0, ge=0)
    initial_brightness: float = Field(1.0, ge=0)

    def smallest_layout(self) -> AttentionLayout:
        """The smallest frame layout this aggregation can be computed from."""
        return "model_stats" if self.aggregation in ("mean", "max") else "layer_stats"


def distance_weights(settings: TrackerSettings, count: int) -> npt.NDArray[np.float32]:
    """w(d) for d = 0 .. count-1."""
    d = np.arange(count, dtype=np.float64)
    mode = settings.distance_mode
    if mode == "none":
        return np.ones(count, np.float32)
    x = np.maximum(d - settings.min_distance, 0.0) / settings.distance_scale
    if mode == "threshold":
        w = np.ones(count)
    elif mode == "linear":
        w = 1.0 + x
    elif mode == "logarithmic":
        w = 1.0 + np.log1p(x)
    else:
        w = 1.0 + np.sqrt(x)
    w[d < settings.min_distance] = 0.0
    return w.astype(np.float32)


# float16 frames: numpy widens float16 to float32 one element at a time (~9 ms for a
# [28, 28, 4096] frame here, 45x a float32 sum), so the sums below widen by bit arithmetic
# instead, a layer at a time into a cache-sized buffer. A half's bits shifted left by 13 are
# a float32 whose exponent is 112 too small (half bias 15, float32 bias 127): exactly the half's
# value times 2**-112, for normals and subnormals alike (those become float32 subnormals,
# still exact). Sums are linear, so the sum is scaled back by 2**112 once, on [ctx] numbers.
# Exact for every finite non-negative half (all a valid attention frame holds); a negative,
# inf or NaN value lands at 2**16 or more, which is seen on the result and answered by the
# exact (slow) numpy path instead.
_HALF = np.dtype(np.float16)  # native byte order only: the bit view assumes it
_HALF_SCALE = np.float32(2.0**112)
_HALF_LIMIT = np.float32(2.0**16)
# If some library switched on denormals-are-zero in this process, half subnormals would read
# as 0 in the bit trick: then the exact path is taken.
_DENORMAL_PROBE = np.full(2, 2.0**-140, np.float32)


def _half_head_sums(frame: npt.NDArray[np.floating], layers: range) -> npt.NDArray[np.float32] | None:
    """Sum over heads of the given layers of a float16 frame: `[len(layers), ctx]` float32,
    or None where the bit trick does not apply (then use numpy's own widening)."""
    if frame.dtype != _HALF or not frame.flags.c_contiguous or not _DENORMAL_PROBE.sum() > 0:
        return None
    bits = frame.view(np.uint16)
    out = np.empty((len(layers), frame.shape[2]), np.float32)
    buffer = np.empty(frame.shape[1:], np.uint32)  # one layer: [heads, ctx]
    for row, layer in enumerate(layers):  # a loop over layers (~30), not over tokens
        np.left_shift(bits[layer], 13, out=buffer, dtype=np.uint32)
        buffer.view(np.float32).sum(axis=0, out=out[row])
    out *= _HALF_SCALE
    if not out.max(initial=0.0) < _HALF_LIMIT:  # (NaN-safe) a value no probability can have
        return None
    return out


def _half_max(frame: npt.NDArray[np.floating]) -> npt.NDArray[np.float32] | None:
    """Max over layers and heads of a float16 frame by its bits: non-negative halfs order
    like their bit patterns as unsigned integers (16x faster than float16 max)."""
    if frame.dtype != _HALF or not frame.flags.c_contiguous:
        return None
    bits = frame.view(np.uint16).reshape(-1, frame.shape[2]).max(axis=0)
    if bits.size and int(bits.max()) >= 0x7C00:  # inf, NaN or a negative value: exact path
        return None
    widened: npt.NDArray[np.float32] = bits.view(np.float16).astype(np.float32)
    return widened


class AttentionTracker:
    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._weights = distance_weights(self.settings, 4096)
        self._layer_weights: dict[int, npt.NDArray[np.float32]] = {}
        self.frames = 0

    def _reversed_weights(self, ctx: int) -> npt.NDArray[np.float32]:
        if ctx > len(self._weights):
            self._weights = distance_weights(self.settings, max(ctx, 2 * len(self._weights)))
        return self._weights[ctx - 1 :: -1] if ctx else self._weights[:0]  # column j -> w(ctx-1-j)

    def layer_weights(self, layers: int) -> npt.NDArray[np.float32]:
        """`weighted_layers`' w_l = (l + 1) / sum_k (k + 1): layer l (0-based) weighs l + 1."""
        w = self._layer_weights.get(layers)
        if w is None:
            w = np.arange(1, layers + 1, dtype=np.float32)
            w /= w.sum()
            self._layer_weights[layers] = w
        return w

    def aggregate(self, frame: npt.NDArray[np.floating], layout: AttentionLayout = "full") -> npt.NDArray[np.float32]:
        """A frame of `layout` -> `[ctx]`, float32. float16 frames are never copied to float32
        as a whole (see `_half_head_sums`)."""
        if frame.ndim != 3:
            raise ValueError(f"a frame is [layers, heads, ctx], not of shape {frame.shape}")
        if layout != "full":
            return self._aggregate_stats(frame, layout)
        agg = self.settings.aggregation
        layers, heads, _ctx = frame.shape
        if agg == "max":
            fast = _half_max(frame)
            if fast is not None:
                return fast
            return frame.max(axis=(0, 1)).astype(np.float32, copy=False)  # type: ignore[no-any-return]
        if agg == "mean":
            sums = _half_head_sums(frame, range(layers))
            if sums is not None:
                total: npt.NDArray[np.float32] = sums.sum(axis=0)
                total /= np.float32(layers * heads)
                return total
            return frame.mean(axis=(0, 1), dtype=np.float32)  # type: ignore[no-any-return]
        if agg == "last_layer":
            sums = _half_head_sums(frame, range(layers - 1, layers))
            if sums is not None:
                last: npt.NDArray[np.float32] = sums[0] / np.float32(heads)
                return last
            return frame[-1].mean(axis=0, dtype=np.float32)  # type: ignore[no-any-return]
        sums = _half_head_sums(frame, range(layers))
        per_layer = sums / np.float32(heads) if sums is not None else frame.mean(axis=1, dtype=np.float32)
        return self.layer_weights(layers) @ per_layer  # type: ignore[no-any-return]

    def _aggregate_stats(self, frame: npt.NDArray[np.floating], layout: AttentionLayout) -> npt.NDArray[np.float32]:
        """The aggregation from statistics over heads: `[:, 0]` the mean, `[:, 1]` the max."""
        agg = self.settings.aggregation
        if frame.shape[1] != 2:
            raise ValueError(f"a {layout} frame is [layers, 2, ctx], not of shape {frame.shape}")
        if layout == "model_stats" and agg not in ("mean", "max"):
            raise ValueError(f"aggregation {agg} needs per-layer statistics (layer_stats or full frames), "
                             "not model_stats")
        means, maxima = frame[:, 0], frame[:, 1]
        if agg == "mean":
            return means.mean(axis=0, dtype=np.float32)  # type: ignore[no-any-return]
        if agg == "max":
            return maxima.max(axis=0).astype(np.float32)  # type: ignore[no-any-return]
        if agg == "last_layer":
            return means[-1].astype(np.float32)  # type: ignore[no-any-return]
        return self.layer_weights(frame.shape[0]) @ means.astype(np.float32)

    def weighted(self, frame: npt.NDArray[np.floating], layout: AttentionLayout = "full") -> npt.NDArray[np.float32]:
        """The frame's contribution per column: boost x w(d) x aggregated attention."""
        return self._weighted_row(self.aggregate(frame, layout))

    def _weighted_row(self, a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        contribution = a * self._reversed_weights(a.shape[0])
        if self.settings.boost != 1.0:
            contribution *= np.float32(self.settings.boost)
        return contribution

    def update(self, brightness: npt.NDArray[np.float32], positions: npt.NDArray[np.int64],
               frame: npt.NDArray[np.floating], layout: AttentionLayout = "full") -> npt.NDArray[np.float32]:
        """Apply one frame of `layout`: column j of `frame` is the token at `positions[j]` of
        `brightness` (`FrameColumns.for_frame(ctx)` gives `positions`). One vectorized pass;
        `brightness` is updated in place. Returns the frame aggregated to one value per column
        (`aggregate`), for whoever shows it: computed once per frame."""
        if frame.ndim != 3 or frame.shape[2] != positions.shape[0]:
            raise ValueError(f"frame of shape {frame.shape} does not match {positions.shape[0]} positions")
        row = self.aggregate(frame, layout)
        contribution = self._weighted_row(row)
        s = self.settings
        current = brightness[positions]
        if s.accumulation == "additive":
            current += contribution
            current -= np.float32(s.decay)
            np.maximum(current, 0.0, out=current)
        elif s.accumulation == "none":
            current += contribution
        else:
            current *= np.float32(1.0 - s.decay)
            current += contribution
        brightness[positions] = current
        self.frames += 1
        return row
