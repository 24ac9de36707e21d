"""Levels on the heat scale -> colours: the one colour ramp of the workbench and its HTML export.

`display/scale.py` turns brightness into levels in [0, 1]; here a level becomes one of `SIZE`
buckets (computed in Python, sent to the page as one byte per token) and a bucket a CSS class
whose colours come from `css()`. The live page and the exported snapshot load the same CSS and
get the same buckets for the same state, so they show the same colours by construction.

Each ramp rises monotonically in luminance (tests/ui/test_palette.py), so a brighter token is
never drawn darker: what the eye orders is what brightness orders.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

SIZE: Final = 64
#: brightness: from the page's own dark (barely looked at) through violet and red to amber and
#: pale yellow (the text the model keeps coming back to)
HEAT_STOPS: Final = ((0.0, (0x1F, 0x23, 0x2E)), (0.35, (0x4B, 0x35, 0x78)), (0.6, (0xB0, 0x3A, 0x5B)),
                     (0.8, (0xE8, 0x7B, 0x2C)), (1.0, (0xFF, 0xE8, 0x8A)))
#: the inspector's attention of one token: another hue, so the two are never confused
ATTENTION_STOPS: Final = ((0.0, (0x1F, 0x23, 0x2E)), (0.5, (0x1C, 0x6E, 0x8C)), (1.0, (0xB8, 0xF4, 0xFF)))


def buckets(levels: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """The bucket of each level in [0, 1] (NaN: 0)."""
    scaled = np.nan_to_num(np.asarray(levels, np.float32), nan=0.0) * SIZE
    out: npt.NDArray[np.uint8] = np.clip(scaled, 0, SIZE - 1).astype(np.uint8)
    return out


def ramp(stops: tuple[tuple[float, tuple[int, int, int]], ...]) -> list[tuple[int, int, int]]:
    """`SIZE` colours, the middle of each bucket interpolated between the stops."""
    at = [s for s, _ in stops]
    channels = np.array([c for _, c in stops], np.float64)
    middle = (np.arange(SIZE) + 0.5) / SIZE
    rgb = np.stack([np.interp(middle, at, channels[:, k]) for k in range(3)], axis=1)
    return [(int(r), int(g), int(b)) for r, g, b in np.rint(rgb).astype(int)]


def luminance(rgb: tuple[int, int, int]) -> float:
    """Relative luminance (WCAG 2), for choosing readable text and for ordering tests."""
    def linear(c: int) -> float:
        v = c / 255.0
        return v / 12.92 if v <= 0.04045 else float(((v + 0.055) / 1.055) ** 2.4)

    r, g, b = rgb
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def _rules(prefix: str, colours: list[tuple[int, int, int]]) -> list[str]:
    rules = []
    for i, (r, g, b) in enumerate(colours):
        text = "#111" if luminance((r, g, b)) > 0.28 else "#e8e8ea"
        rules.append(f".{prefix}{i}{{background:#{r:02x}{g:02x}{b:02x};color:{text}}}")
    return rules


def css() -> str:
    """The classes `h0`..`h63` (brightness) and `a0`..`a63` (the inspector's attention)."""
    return "\n".join(_rules("h", ramp(HEAT_STOPS)) + _rules("a", ramp(ATTENTION_STOPS))) + "\n"


def gradient(stops: tuple[tuple[float, tuple[int, int, int]], ...] = HEAT_STOPS) -> str:
    """The ramp as a CSS linear-gradient, for the legend."""
    return "linear-gradient(90deg, " + ", ".join(
        f"#{r:02x}{g:02x}{b:02x} {at * 100:.0f}%" for at, (r, g, b) in stops) + ")"
