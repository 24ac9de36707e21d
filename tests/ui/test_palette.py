"""The colour ramp: a brighter token is never drawn darker."""

from __future__ import annotations

import itertools

import numpy as np

from halo_client.ui import palette


def test_every_ramp_rises_in_luminance() -> None:
    for stops in (palette.HEAT_STOPS, palette.ATTENTION_STOPS):
        lum = [palette.luminance(c) for c in palette.ramp(stops)]
        assert len(lum) == palette.SIZE and all(b > a for a, b in itertools.pairwise(lum))


def test_levels_fall_into_buckets_end_to_end() -> None:
    got = palette.buckets(np.array([0.0, 1 / 64 - 1e-6, 1 / 64, 0.5, 0.999, 1.0, np.nan], np.float32))
    assert got.tolist() == [0, 0, 1, 32, 63, 63, 0] and got.dtype == np.uint8


def test_the_css_has_one_class_per_bucket_and_readable_text() -> None:
    css = palette.css()
    assert css.count(".h") == palette.SIZE and css.count(".a") == palette.SIZE
    assert ".h0{background:#202330;color:#e8e8ea}" in css  # the middle of bucket 0, light text
    assert "color:#111" in css.split(".h63")[1].split("\n")[0]  # dark text on the brightest
