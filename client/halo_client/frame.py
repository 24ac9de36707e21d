"""The attention frame codec: bytes <-> a numpy view, with no I/O.

Layout (api_spec/websocket.md, "Attention frame"): a 32-byte little-endian header

    offset size field
    0      4    magic b"HWAF"
    4      2    version (1: the full layout; 2: a reduced one)
    6      2    header_size (32; the payload starts there)
    8      4    token_index
    12     2    dtype (1 = float32, 2 = float16)
    14     2    layout (0 = full, 1 = layer_stats, 2 = model_stats; 0 in version 1)
    16     4    layers
    20     4    heads (2 for the statistics layouts: mean, max)
    24     4    ctx
    28     4    reserved (0)

then `layers * heads * ctx` little-endian values in C order `[layers, heads, ctx]`.
`reduce_attention` is the one definition of the reduced layouts (rule F8): the project's servers
compute their frames with it and the conformance suite checks every server against it.

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
from halo_client.messages import AttentionLayout

MAGIC: Final = b"HWAF"
#: the version of full frames (unchanged since the first contract) and of reduced ones
VERSION: Final = 1
VERSION_REDUCED: Final = 2
HEADER: Final = struct.Struct("<4sHHIHHIIII")
HEADER_SIZE: Final = HEADER.size  # 32

DTYPE_CODES: Final[dict[str, int]] = {"float32": 1, "float16": 2}
_NUMPY_DTYPES: Final[dict[int, np.dtype[np.floating]]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
}
_CODE_NAMES: Final[dict[int, str]] = {code: name for name, code in DTYPE_CODES.items()}
LAYOUT_CODES: Final[dict[AttentionLayout, int]] = {"full": 0, "layer_stats": 1, "model_stats": 2}
_LAYOUT_NAMES: Final[dict[int, AttentionLayout]] = {code: name for name, code in LAYOUT_CODES.items()}

#: Frames larger than this are refused unless the caller allows more: 28 layers x 28 heads x
#: 131,072 columns of float32 is 411 MB, so 1 GiB covers every model KoboldCPP runs today.
DEFAULT_MAX_FRAME_BYTES: Final = 1 << 30


@dataclass(frozen=True)
class AttentionFrame:
    """One generated token's attention: `values[layer, head, column]`."""

    token_index: int
    dtype: str
    values: npt.NDArray[np.floating]
    layout: AttentionLayout = "full"

    @property
    def layers(self) -> int:
        return int(self.values.shape[0])

    @property
    def heads(self) -> int:
        return int(self.values.shape[1])

    @property
    def ctx(self) -> int:
        return int(self.values.shape[2])


def frame_shape(layout: AttentionLayout, layers: int, heads: int, ctx: int) -> tuple[int, int, int]:
    """The shape of a frame of `layout` for a model of `layers` x `heads` (query heads)."""
    if layout == "full":
        return layers, heads, ctx
    return (layers if layout == "layer_stats" else 1), 2, ctx


def reduce_attention(values: npt.NDArray[np.floating], layout: AttentionLayout) -> npt.NDArray[np.float32]:
    """A full frame `[layers, heads, ctx]` in `layout` (rule F8): per layer (`layer_stats`) or
    over the whole model (`model_stats`), the mean over heads at `[:, 0]` and the max at
    `[:, 1]`, computed in float32. `full` returns the values as float32."""
    full = np.asarray(values, dtype=np.float32)
    if layout == "full":
        return full
    layers, _heads, ctx = full.shape
    axes = (1,) if layout == "layer_stats" else (0, 1)
    out = np.empty(frame_shape(layout, layers, 2, ctx), np.float32)
    out[:, 0] = full.mean(axis=axes, dtype=np.float32).reshape(-1, ctx)
    out[:, 1] = full.max(axis=axes).reshape(-1, ctx)
    return out


def encode_frame(token_index: int, values: npt.NDArray[np.floating], dtype: str = "float32",
                 layout: AttentionLayout = "full") -> bytes:
    """The wire bytes of one frame. `values` has shape `[layers, heads, ctx]` (for the reduced
    layouts: already reduced, `[layers or 1, 2, ctx]`)."""
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
    if layout != "full" and heads != 2:
        raise FrameError(f"a {layout} frame has 2 statistics (mean, max) per column; got shape {values.shape}")
    payload = np.ascontiguousarray(values, dtype=_NUMPY_DTYPES[code])
    return frame_header(layers, heads, ctx, token_index, dtype, layout) + payload.tobytes()


def frame_header(layers: int, heads: int, ctx: int, token_index: int, dtype: str,
                 layout: AttentionLayout = "full") -> bytes:
    """Only the header: lets a server send header and payload without joining them."""
    version = VERSION if layout == "full" else VERSION_REDUCED
    return HEADER.pack(MAGIC, version, HEADER_SIZE, token_index, DTYPE_CODES[dtype], LAYOUT_CODES[layout],
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
    magic, version, header_size, token_index, code, layout_code, layers, heads, ctx, _r2 = (
        HEADER.unpack_from(message, 0)
    )
    if magic != MAGIC:
        raise FrameError(f"not an attention frame: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version not in (VERSION, VERSION_REDUCED):
        raise FrameError(
            f"attention frame version {version} is not supported (this client speaks {VERSION} and "
            f"{VERSION_REDUCED}); upgrade halo-weave or the server so both speak the same api_spec version"
        )
    layout = _LAYOUT_NAMES.get(layout_code) if version == VERSION_REDUCED else (
        "full" if layout_code == 0 else None)
    if layout is None:
        raise FrameError(f"attention frame version {version} has layout code {layout_code}, which it cannot carry "
                         "(version 1: 0; version 2: 0 = full, 1 = layer_stats, 2 = model_stats)")
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
    if layout != "full" and heads != 2:
        raise FrameError(f"a {layout} frame has 2 statistics per column, not {heads}")
    values = np.frombuffer(message, dtype=dtype, offset=HEADER_SIZE).reshape(layers, heads, ctx)
    if values.flags.writeable:  # bytearray / writable memoryview input: keep callers honest
        values.flags.writeable = False
    return AttentionFrame(token_index=token_index, dtype=_CODE_NAMES[code], values=values, layout=layout)


def check_frame_semantics(
    frame: AttentionFrame,
    *,
    layers: int,
    heads: int,
    ctx: int,
    token_index: int,
    dtype: str,
    layout: AttentionLayout = "full",
) -> None:
    """Check a decoded frame against what the contract says it must be for this token
    (`layers`, `heads`: the model's; the layout decides the frame's shape)."""
    if frame.token_index != token_index:
        raise FrameError(f"frame for token {frame.token_index} arrived where token {token_index}'s was due")
    if frame.dtype != dtype:
        raise FrameError(f"frame dtype {frame.dtype}, but {dtype} was requested")
    if frame.layout != layout:
        raise FrameError(f"frame layout {frame.layout}, but {layout} was requested")
    shape = frame_shape(layout, layers, heads, ctx)
    if frame.values.shape != shape:
        raise FrameError(
            f"{layout} frame of token {token_index} has shape {list(frame.values.shape)}, the contract says "
            f"{list(shape)} (ctx = len(input_ids) + {token_index})"
        )
