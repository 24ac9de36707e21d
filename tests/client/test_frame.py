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
    DTYPE_CODES,
    HEADER,
    HEADER_SIZE,
    LAYOUT_CODES,
    MAGIC,
    check_frame_semantics,
    decode_frame,
    encode_frame,
    reduce_attention,
)
from halo_client.messages import AttentionLayout

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
        (_header(version=3) + b"\0" * 8, "version"),
        (_header(version=0) + b"\0" * 8, "version"),
        (_header(r1=1) + b"\0" * 8, "layout code 1"),  # version 1 carries full frames only
        (_header(version=2, r1=3) + b"\0" * 8, "layout code 3"),
        (_header(version=2, r1=1) + b"\0" * 8, "2 statistics"),  # layer_stats with 1 "head"
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


@MANY
@given(frames(), st.sampled_from(["layer_stats", "model_stats"]))
def test_reduced_layouts_round_trip_with_version_2(frame: tuple[int, str, np.ndarray], layout: AttentionLayout) -> None:
    index, dtype, full = frame
    values = reduce_attention(full, layout).astype(full.dtype)
    message = encode_frame(index, values, dtype, layout)
    assert struct.unpack_from("<HHIHH", message, 4) == (2, 32, index, DTYPE_CODES[dtype], LAYOUT_CODES[layout])
    decoded = decode_frame(message)
    assert decoded.layout == layout and decoded.token_index == index
    np.testing.assert_array_equal(decoded.values, values)
    layers, heads, ctx = full.shape
    check_frame_semantics(decoded, layers=layers, heads=heads, ctx=ctx, token_index=index, dtype=dtype, layout=layout)
    with pytest.raises(FrameError, match="layout"):
        check_frame_semantics(decoded, layers=layers, heads=heads, ctx=ctx, token_index=index, dtype=dtype)


def test_full_frames_keep_version_1_bytes() -> None:
    values = np.random.default_rng(1).random((3, 4, 5), dtype=np.float32)
    message = encode_frame(9, values)
    assert message == HEADER.pack(MAGIC, 1, 32, 9, 1, 0, 3, 4, 5, 0) + values.tobytes()
    assert decode_frame(message).layout == "full"


def test_reduce_attention_is_rule_f8() -> None:
    a = np.random.default_rng(2).random((3, 4, 5)).astype(np.float32)
    layer = reduce_attention(a, "layer_stats")
    model = reduce_attention(a, "model_stats")
    assert layer.shape == (3, 2, 5) and model.shape == (1, 2, 5)
    np.testing.assert_allclose(layer[:, 0], a.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(layer[:, 1], a.max(axis=1))
    np.testing.assert_allclose(model[0, 0], a.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_array_equal(model[0, 1], a.max(axis=(0, 1)))
    with pytest.raises(FrameError, match="2 statistics"):
        encode_frame(0, a, layout="layer_stats")


def test_encode_refuses_what_cannot_be_a_frame() -> None:
    with pytest.raises(FrameError):
        encode_frame(0, np.ones((2, 2), np.float32))
    with pytest.raises(FrameError):
        encode_frame(0, np.ones((1, 1, 1), np.float32), "bfloat16")
    with pytest.raises(FrameError):
        encode_frame(-1, np.ones((1, 1, 1), np.float32))
