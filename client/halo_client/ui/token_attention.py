"""Per token, the attention it got from the latest generated token and its peak: what the
tooltip tells besides brightness.

Brightness is a running sum; a user hovering a token also wants to know whether the model is
looking at it *now* and when it looked hardest. Both come from the aggregated attention
(`AttentionTracker.aggregate`, the same number brightness accumulates) of each frame, kept per
position in arrays grown geometrically, updated in one vectorized step per frame. They live
only as long as the workbench process (a session file keeps brightness, not this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NONE = -1


@dataclass(frozen=True)
class Observed:
    #: attention from the latest generated token; None when the token was not in its context
    latest: float | None
    #: the largest attention it got from one generated token, and that token's position
    peak: float | None
    peak_from: int | None


class TokenAttention:
    def __init__(self) -> None:
        self._latest = np.zeros(0, np.float32)
        self._latest_from = np.zeros(0, np.int64)
        self._peak = np.zeros(0, np.float32)
        self._peak_from = np.zeros(0, np.int64)
        #: the position of the latest generated token whose frame was seen
        self.latest_source = NONE

    def _grow(self, size: int) -> None:
        capacity = self._peak.size
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 1024)
        for name, fill in (("_latest", 0.0), ("_latest_from", NONE), ("_peak", -1.0), ("_peak_from", NONE)):
            old = getattr(self, name)
            grown = np.full(capacity, fill, old.dtype)
            grown[: old.size] = old
            setattr(self, name, grown)

    def observe(self, positions: npt.NDArray[np.int64], attention: npt.NDArray[np.floating], source: int) -> None:
        """The frame of the generated token at `source`: `attention[j]` went to `positions[j]`."""
        if positions.size:
            self._grow(int(positions.max()) + 1)
        values = np.asarray(attention, np.float32)
        self._latest[positions] = values
        self._latest_from[positions] = source
        higher = values > self._peak[positions]
        self._peak[positions[higher]] = values[higher]
        self._peak_from[positions[higher]] = source
        self.latest_source = source

    def forget_from(self, position: int) -> None:
        """A discarded reply: nothing from `position` on was ever generated, so its attention
        is forgotten (a peak it gave is gone; the one before it is not known, so none is shown)."""
        if position >= self._peak.size:
            return
        gave = self._peak_from >= position
        self._peak[gave] = -1.0
        self._peak_from[gave] = NONE
        self._latest_from[self._latest_from >= position] = NONE
        self._latest[position:] = 0.0
        if self.latest_source >= position:
            self.latest_source = NONE

    def table(self, count: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The peak and its source of positions 0..count-1 at once (the token dictionary):
        NaN and -1 where no frame has looked at the token."""
        peak = np.full(count, np.nan, np.float32)
        source = np.full(count, NONE, np.int64)
        k = min(count, self._peak.size)
        seen = self._peak_from[:k] != NONE
        peak[:k][seen] = self._peak[:k][seen]
        source[:k] = self._peak_from[:k]
        return peak, source

    def get(self, position: int) -> Observed:
        if position >= self._peak.size or self._peak_from[position] == NONE:
            return Observed(None, None, None)
        current = self.latest_source != NONE and self._latest_from[position] == self.latest_source
        return Observed(float(self._latest[position]) if current else None, float(self._peak[position]),
                        int(self._peak_from[position]))
