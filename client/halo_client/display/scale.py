"""The heat scale: brightness -> a level in [0, 1] that a display turns into a colour.

Attention is dominated by sinks: the conversation's first token (and template tokens such as
`<|im_start|>` or the newline after a role) take most of every head's attention, so a scale
that runs up to the brightest token puts almost all real content in its bottom fifth. Here only
the tokens a user can act on set the scale: the content of user and assistant messages (what
the pruner may remove). Template tokens and the system prompt are still drawn, clipped to the
scale's ends, but cannot stretch it.

Two mappings, both of the scaling tokens' own distribution:

- `percentile` (default): a token's level is the share of scaling tokens below its
  brightness (ties count half). Every level is used equally often, so differences among ordinary content are as
  visible as they can be; the level says "brighter than 80 % of the text", not by how much.
- `log`: the logarithm of brightness, from the scaling tokens' 2nd to their 98th percentile.
  Equal steps are equal ratios, so the level keeps the sense of "how much brighter".

This is the one scale: the terminal's heat view and the workbench draw with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from halo_client.conversation.state import ROLES, ConversationState

ScaleMode = Literal["percentile", "log"]
SCALE_MODES: Final[tuple[ScaleMode, ...]] = ("percentile", "log")
_LOG_FLOOR: Final = 1e-6  # brightness can be 0 (decayed); log needs a floor
_LOG_RANGE: Final = (2.0, 98.0)  # percentiles of the scaling tokens that span the log scale


@dataclass(frozen=True)
class HeatScale:
    """A scale fitted to one set of brightness values; `levels` maps any brightness onto it."""

    mode: ScaleMode
    #: how many tokens set the scale
    count: int
    #: brightness at the bottom and at the top of the scale
    low: float
    high: float
    #: the scaling tokens' brightness, sorted (the percentile scale's reference)
    ordered: npt.NDArray[np.float64]

    def levels(self, brightness: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Levels in [0, 1] for `brightness` (any tokens, scaling or not), vectorized."""
        values = np.asarray(brightness, np.float64)
        if self.mode == "percentile":
            if not self.ordered.size:
                return np.zeros(values.shape, np.float32)
            # mid-rank: tokens tied with many others sit in the middle of their tie, not at its top.
            # The values are searched in ascending order: the same ranks, 3-4x faster from ~5,000
            # tokens on than in position order (binary searches in random order mispredict at
            # every step); the workbench fits the scale on every token.
            order = np.argsort(values)  # (ties rank alike in any order: no need for a stable sort)
            ascending = values[order]
            ranks = np.empty(values.shape, np.float64)
            ranks[order] = (np.searchsorted(self.ordered, ascending, side="left")
                            + np.searchsorted(self.ordered, ascending, side="right"))
            return (ranks / (2 * self.ordered.size)).astype(np.float32)
        low, high = np.log(max(self.low, _LOG_FLOOR)), np.log(max(self.high, _LOG_FLOOR))
        if high <= low:
            return np.full(values.shape, 0.5, np.float32)
        x = (np.log(np.maximum(values, _LOG_FLOOR)) - low) / (high - low)
        return np.clip(x, 0.0, 1.0).astype(np.float32)  # type: ignore[no-any-return]

    def legend(self) -> str:
        """One line saying what the levels mean."""
        how = ("share of the text it outshines" if self.mode == "percentile"
               else "log brightness, 2nd-98th percentile")
        return (f"{self.mode} scale over {self.count} content tokens "
                f"(brightness {self.low:.3g} to {self.high:.3g}; {how}); template and system text are drawn, "
                "clipped, but do not set it")


def heat_scale(brightness: npt.NDArray[np.floating], scaling: npt.NDArray[np.bool_],
               mode: ScaleMode = "percentile") -> HeatScale:
    """Fit the scale to `brightness[scaling]` (the tokens allowed to set it; with none, every
    token does)."""
    values = np.asarray(brightness, np.float64)
    chosen = values[scaling] if scaling.any() else values
    ordered = np.sort(chosen[np.isfinite(chosen)])
    if not ordered.size:
        return HeatScale(mode, 0, 0.0, 0.0, ordered)
    if mode == "percentile":
        return HeatScale(mode, int(ordered.size), float(ordered[0]), float(ordered[-1]), ordered)
    low, high = (float(v) for v in np.percentile(ordered, _LOG_RANGE))
    return HeatScale(mode, int(ordered.size), low, high, ordered)


def scaling_tokens(state: ConversationState, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Which of `positions` may set the scale: content of user and assistant messages (what the
    pruner may remove), not template tokens, not the system prompt."""
    template = state.column("template")[positions]
    system = state.column("role")[positions] == ROLES.index("system")
    mask: npt.NDArray[np.bool_] = ~template & ~system
    return mask


def conversation_levels(state: ConversationState, positions: npt.NDArray[np.int64],
                        mode: ScaleMode = "percentile") -> tuple[npt.NDArray[np.float32], HeatScale]:
    """The levels of the tokens at `positions` (usually the active ones) on a scale fitted to
    their scaling tokens, and that scale (for the legend)."""
    brightness = state.brightness[positions]
    scale = heat_scale(brightness, scaling_tokens(state, positions), mode)
    return scale.levels(brightness), scale
