"""The frame codec: round trip, zero copy, and every malformed frame rejected with FrameError."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from halo_client.errors import FrameError
from halo_client.frame import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    check_frame_semantics,
    decode_frame,
    encode_frame,
)

# CI runs these at 1,000 examples each, as the foundation issue asks.
MANY = settings(max_examples=1000, deadline=None)

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 40))


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, str, np.ndarray]:
    dtype = draw(st.sampled_from(["float32", "float16"]))
    shape = draw(shapes)
    values = draw(hnp.arrays(np.float32 if dtype == "float32" else np.float16, shape,
                             elements=st.floats(0, 1, width=32 if dtype == "float32" else 16)))
    return draw(st.integers(0, 2**32 - 1)), dtype, values


@MANY
@given(frames())
def test_round_trip_is_exact(frame: tuple[int, str, np.ndarray]) -> None:
    index, dtype, values = frame
    decoded = decode_frame(encode_frame(index, values, dtype))
    assert decoded.token_index == index
    assert decoded.dtype == dtype
    assert decoded.values.shape == values.shape
    assert decoded.values.dtype == values.dtype
    np.testing.assert_array_equal(decoded.values, values)


def test_decode_is_a_zero_copy_read_only_view() -> None:
    values = np.random.default_rng(0).random((2, 3, 5), dtype=np.float32)
    message = encode_frame(7, values)
    frame = decode_frame(message)
    assert np.shares_memory(frame.values, np.frombuffer(message, np.uint8))
    assert not frame.values.flags.writeable
    # a writable buffer must not hand out a writable view either
    assert not decode_frame(bytearray(message)).values.flags.writeable


def test_header_layout_is_the_documented_one() -> None:
    message = encode_frame(3, np.ones((2, 1, 4), np.float16) / 4, "float16")
    assert HEADER_SIZE == 32
    assert message[:4] == b"HWAF"
    assert struct.unpack_from("<HHIHHIIII", message, 4) == (1, 32, 3, 2, 0, 2, 1, 4, 0)
    assert len(message) == 32 + 2 * 1 * 4 * 2


def _header(**fields: int | bytes) -> bytes:
    base: dict[str, int | bytes] = dict(magic=MAGIC, version=1, size=32, index=0, dtype=1, r1=0,
                                        layers=1, heads=1, ctx=2, r2=0)
    base.update(fields)
    return HEADER.pack(*base.values())


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (b"", "truncated"),
        (b"HWAF" + b"\0" * 10, "truncated"),
        (_header(magic=b"HWAX") + b"\0" * 8, "magic"),
        (_header(version=2) + b"\0" * 8, "version"),
        (_header(size=64) + b"\0" * 8, "header_size"),
        (_header(dtype=3) + b"\0" * 8, "dtype"),
        (_header(dtype=0) + b"\0" * 8, "dtype"),
        (_header(layers=0) + b"\0" * 8, "empty"),
        (_header() + b"\0" * 7, "needs"),
        (_header() + b"\0" * 9, "needs"),
        (_header(dtype=2) + b"\0" * 8, "needs"),  # float16 needs 4 bytes, not 8
        (_header(layers=2**32 - 1, heads=2**32 - 1, ctx=2**32 - 1), "needs"),
    ],
)
def test_malformed_frames_are_refused(message: bytes, words: str) -> None:
    with pytest.raises(FrameError, match=words):
        decode_frame(message)


def test_oversized_frames_are_refused_before_parsing() -> None:
    message = encode_frame(0, np.ones((1, 1, 64), np.float32) / 64)
    with pytest.raises(FrameError, match="exceeds"):
        decode_frame(message, max_bytes=len(message) - 1)


@MANY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_or_misread(blob: bytes) -> None:
    try:
        frame = decode_frame(blob)
    except FrameError:
        return
    # whatever was accepted must be exactly what its header describes
    assert len(blob) == HEADER_SIZE + frame.values.size * frame.values.itemsize
    assert blob[:4] == MAGIC


@MANY
@given(frames(), st.data())
def test_any_single_corruption_is_caught_or_harmless(frame: tuple[int, str, np.ndarray],
                                                    data: st.DataObject) -> None:
    index, dtype, values = frame
    message = bytearray(encode_frame(index, values, dtype))
    cut = data.draw(st.integers(0, len(message) - 1))
    mutated = data.draw(st.sampled_from(["truncate", "extend", "flip"]))
    if mutated == "truncate":
        del message[cut:]
    elif mutated == "extend":
        message += b"\0" * data.draw(st.integers(1, 8))
    else:
        message[cut] ^= 0xFF
    try:
        decoded = decode_frame(bytes(message))
    except FrameError:
        return
    # a flip that survives validation must sit in the payload, the token index or a reserved
    # field: never in a field that changes how the values are read
    assert mutated == "flip"
    assert cut >= HEADER_SIZE or 8 <= cut < 12 or 14 <= cut < 16 or 28 <= cut < 32
    assert decoded.values.shape == values.shape


def test_semantic_check_names_the_broken_rule() -> None:
    frame = decode_frame(encode_frame(4, np.ones((2, 2, 9), np.float32) / 9))
    check_frame_semantics(frame, layers=2, heads=2, ctx=9, token_index=4, dtype="float32")
    with pytest.raises(FrameError, match="shape"):
        check_frame_semantics(frame, layers=2, heads=2, ctx=10, token_index=4, dtype="float32")
    with pytest.raises(FrameError, match="token 4"):
        check_frame_semantics(frame, layers=2, heads=2, ctx=9, token_index=5, dtype="float32")
    with pytest.raises(FrameError, match="dtype"):
        check_frame_semantics(frame, layers=2, heads=2, ctx=9, token_index=4, dtype="float16")


def test_encode_refuses_what_cannot_be_a_frame() -> None:
    with pytest.raises(FrameError):
        encode_frame(0, np.ones((2, 2), np.float32))
    with pytest.raises(FrameError):
        encode_frame(0, np.ones((1, 1, 1), np.float32), "bfloat16")
    with pytest.raises(FrameError):
        encode_frame(-1, np.ones((1, 1, 1), np.float32))
