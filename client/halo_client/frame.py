"""The attention frame codec: bytes <-> a numpy view, with no I/O.

Layout (api_spec/websocket.md, "Attention frame"): a 32-byte little-endian header

    offset size field
    0      4    magic b"HWAF"
    4      2    version (1)
    6      2    header_size (32; the payload starts there)
    8      4    token_index
    12     2    dtype (1 = float32, 2 = float16)
    14     2    reserved (0)
    16     4    layers
    20     4    heads
    24     4    ctx
    28     4    reserved (0)

then `layers * heads * ctx` little-endian values in C order `[layers, heads, ctx]`.

Decoding never copies the payload: the returned array is a read-only view of the message
buffer. Every way a frame can be malformed raises `FrameError` before any value is read, so a
bad server cannot make the client misread attention silently.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from halo_client.errors import FrameError

MAGIC: Final = b"HWAF"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sHHIHHIIII")
HEADER_SIZE: Final = HEADER.size  # 32

DTYPE_CODES: Final[dict[str, int]] = {"float32": 1, "float16": 2}
_NUMPY_DTYPES: Final[dict[int, np.dtype[np.floating]]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
}
_CODE_NAMES: Final[dict[int, str]] = {code: name for name, code in DTYPE_CODES.items()}

#: Frames larger than this are refused unless the caller allows more: 28 layers x 28 heads x
#: 131,072 columns of float32 is 411 MB, so 1 GiB covers every model KoboldCPP runs today.
DEFAULT_MAX_FRAME_BYTES: Final = 1 << 30


@dataclass(frozen=True)
class AttentionFrame:
    """One generated token's attention: `values[layer, head, column]`."""

    token_index: int
    dtype: str
    values: npt.NDArray[np.floating]

    @property
    def layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def heads(self) -> int:
        return int(self.values.shape[1])

    @property
    def ctx(self) -> int:
        return int(self.values.shape[2])


def encode_frame(token_index: int, values: npt.NDArray[np.floating], dtype: str = "float32") -> bytes:
    """The wire bytes of one frame. `values` has shape `[layers, heads, ctx]`."""
    if values.ndim != 3:
        raise FrameError(f"an attention frame is [layers, heads, ctx]; got shape {values.shape}")
    code = DTYPE_CODES.get(dtype)
    if code is None:
        raise FrameError(f"unsupported frame dtype {dtype!r}; use one of {sorted(DTYPE_CODES)}")
    if not 0 <= token_index < 2**32:
        raise FrameError(f"token_index {token_index} does not fit in 32 bits")
    layers, heads, ctx = (int(n) for n in values.shape)
    if min(layers, heads, ctx) < 1:
        raise FrameError(f"every frame dimension must be at least 1; got {values.shape}")
    payload = np.ascontiguousarray(values, dtype=_NUMPY_DTYPES[code])
    header = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, token_index, code, 0, layers, heads, ctx, 0)
    return header + payload.tobytes()


def frame_header(layers: int, heads: int, ctx: int, token_index: int, dtype: str) -> bytes:
    """Only the header: lets a server send header and payload without joining them."""
    return HEADER.pack(MAGIC, VERSION, HEADER_SIZE, token_index, DTYPE_CODES[dtype], 0,
                       layers, heads, ctx, 0)


def decode_frame(
    message: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> AttentionFrame:
    """Parse and validate one frame; the values are a zero-copy, read-only view of `message`."""
    size = len(message)
    if size > max_bytes:
        raise FrameError(f"attention frame of {size} bytes exceeds the limit of {max_bytes} bytes")
    if size < HEADER_SIZE:
        raise FrameError(f"attention frame truncated: {size} bytes, the header alone is {HEADER_SIZE}")
    magic, version, header_size, token_index, code, _r1, layers, heads, ctx, _r2 = (
        HEADER.unpack_from(message, 0)
    )
    if magic != MAGIC:
        raise FrameError(f"not an attention frame: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(
            f"attention frame version {version} is not supported (this client speaks {VERSION}); "
            "upgrade halo-weave or the server so both speak the same api_spec version"
        )
    if header_size != HEADER_SIZE:
        raise FrameError(f"attention frame header_size {header_size}, expected {HEADER_SIZE}")
    dtype = _NUMPY_DTYPES.get(code)
    if dtype is None:
        raise FrameError(f"attention frame dtype code {code} is unknown (1 = float32, 2 = float16)")
    if min(layers, heads, ctx) < 1:
        raise FrameError(f"attention frame has an empty dimension: [{layers}, {heads}, {ctx}]")
    expected = HEADER_SIZE + layers * heads * ctx * dtype.itemsize
    if size != expected:
        raise FrameError(
            f"attention frame [{layers}, {heads}, {ctx}] {_CODE_NAMES[code]} needs {expected} "
            f"bytes, got {size}"
        )
    values = np.frombuffer(message, dtype=dtype, offset=HEADER_SIZE).reshape(layers, heads, ctx)
    if values.flags.writeable:  # bytearray / writable memoryview input: keep callers honest
        values.flags.writeable = False
    return AttentionFrame(token_index=token_index, dtype=_CODE_NAMES[code], values=values)


def check_frame_semantics(
    frame: AttentionFrame,
    *,
    layers: int,
    heads: int,
    ctx: int,
    token_index: int,
    dtype: str,
) -> None:
    """Check a decoded frame against what the contract says it must be for this token."""
    if frame.token_index != token_index:
        raise FrameError(f"frame for token {frame.token_index} arrived where token {token_index}'s was due")
    if frame.dtype != dtype:
        raise FrameError(f"frame dtype {frame.dtype}, but {dtype} was requested")
    shape = (layers, heads, ctx)
    if frame.values.shape != shape:
        raise FrameError(
            f"frame of token {token_index} has shape {list(frame.values.shape)}, the contract says "
            f"{list(shape)} (layers, query heads, len(input_ids) + {token_index})"
        )
