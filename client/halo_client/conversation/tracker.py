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
   tokens back. With `m = min_distance` (default 0; the first design used 20), `s = distance_scale`
   (default 10) and `x = d - m`:
   $w(d) = 0$ for $d < m$ (local attention to the sentence being written does not count), and
   for $d \ge m$: `threshold` 1, `linear` $1 + x/s$, `logarithmic` (default) $1 + \ln(1 + x/s)$,
   `square_root` $1 + \sqrt{x/s}$. Every weight is non-decreasing in `d`: attention that
   reaches far back is the evidence that a token is still used. Mode `none` weights every
   column 1 (no distance filter at all).
3. **Accumulate** into the brightness `b` of each column's position:
   - `additive` (default, with `decay` 0 by default; the first design used 0.003):
     $b \leftarrow \max(0,\ b + \text{boost}\cdot w\,a - \text{decay})$
   - `none`: $b \leftarrow b + \text{boost}\cdot w\,a$ (no decay)
   - `exponential`: $b \leftarrow b\,(1 - \text{decay}) + \text{boost}\cdot w\,a$

New tokens start "bright": at the mean brightness of the conversation's active content, and at
least `initial_brightness` (default 1.0). A token has not yet been looked at when it arrives, so
it needs a grace period: starting level with the average, it is not the first thing a prune
takes. (With the first design's decay of 0.003, an unattended token lost 1.0 over about 330
generated tokens.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

Aggregation = Literal["mean", "max", "last_layer", "weighted_layers"]
DistanceMode = Literal["none", "threshold", "linear", "logarithmic", "square_root"]
Accumulation = Literal["additive", "none", "exponential"]


class TrackerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregation: Aggregation = "mean"
    distance_mode: DistanceMode = "logarithmic"
    # Defaults chosen by the pruning benchmark's tuning split (docs/pruning.md): the first
    # design's min_distance 20 and decay 0.003 were the worst of the grid there.
    min_distance: int = Field(0, ge=0)
    distance_scale: float = Field(10.0, gt=0)
    accumulation: Accumulation = "additive"
    decay: float = Field(0.0, ge=0, le=1)
    boost: float = Field(1.0, ge=0)
    initial_brightness: float = Field(1.0, ge=0)


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


class AttentionTracker:
    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._weights = distance_weights(self.settings, 4096)
        layers_weights: dict[int, npt.NDArray[np.float32]] = {}
        self._layer_weights = layers_weights
        self.frames = 0

    def _reversed_weights(self, ctx: int) -> npt.NDArray[np.float32]:
        if ctx > len(self._weights):
            self._weights = distance_weights(self.settings, max(ctx, 2 * len(self._weights)))
        return self._weights[ctx - 1 :: -1] if ctx else self._weights[:0]  # column j -> w(ctx-1-j)

    def aggregate(self, frame: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """`[layers, heads, ctx]` -> `[ctx]`, float32 (float16 frames are accumulated in float32
        without a float32 copy of the frame)."""
        agg = self.settings.aggregation
        if agg == "mean":
            return frame.mean(axis=(0, 1), dtype=np.float32)  # type: ignore[no-any-return]
        if agg == "max":
            return frame.max(axis=(0, 1)).astype(np.float32, copy=False)  # type: ignore[no-any-return]
        if agg == "last_layer":
            return frame[-1].mean(axis=0, dtype=np.float32)  # type: ignore[no-any-return]
        layers = frame.shape[0]
        w = self._layer_weights.get(layers)
        if w is None:
            w = np.arange(1, layers + 1, dtype=np.float32)
            w /= w.sum()
            self._layer_weights[layers] = w
        per_layer = frame.mean(axis=1, dtype=np.float32)  # [layers, ctx]
        return w @ per_layer  # type: ignore[no-any-return]

    def weighted(self, frame: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """The frame's contribution per column: boost x w(d) x aggregated attention."""
        a = self.aggregate(frame)
        contribution = a * self._reversed_weights(a.shape[0])
        if self.settings.boost != 1.0:
            contribution *= np.float32(self.settings.boost)
        return contribution

    def update(self, brightness: npt.NDArray[np.float32], positions: npt.NDArray[np.int64],
               frame: npt.NDArray[np.floating]) -> None:
        """Apply one frame: column j of `frame` is the token at `positions[j]` of `brightness`."""
        if frame.ndim != 3 or frame.shape[2] != positions.shape[0]:
            raise ValueError(f"frame of shape {frame.shape} does not match {positions.shape[0]} positions")
        contribution = self.weighted(frame)
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
