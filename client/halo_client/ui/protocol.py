"""The workbench's wire format: what the page sends (JSON commands), and the compact binary
update the UI server sends per generated token.

One WebSocket carries everything. The page sends one JSON object per command (`Command`,
validated here: an unknown type or field is refused, as in the contract). The server sends JSON
objects (`{"type": ...}`, built by `page_messages.py`) and, per generated token, one binary
`levels` message (at most one per display frame: tokens faster than 60 a second share one) with the
brightness of every active position and its colour bucket on the heat scale,

    offset size field
    0      4    magic b"HWLV"
    4      2    version (1)
    6      2    header_size (32)
    8      4    epoch: bumped whenever the set of active positions changes other than by a new token
    12     4    count: active positions (n)
    16     4    newest: position of the token this update is for, -1 for a refresh
    20     4    reserved (0)
    24     8    sent_ms: float64 Unix time in ms when the newest token it covers reached the UI
                server (the page's display lag is measured from it); 0: no token
    32     4n   brightness, float32, in position order of the active tokens
    32+4n  n    bucket, uint8 (palette.py)

all little-endian. A page that holds `count` active positions of this epoch reads both arrays
without a copy (`Float32Array` / `Uint8Array` views); any other count means it missed something
and asks for a `resync`. Full attention frames never go to the page; one token's attention goes
on demand (`inspect`).
"""

from __future__ import annotations

import base64
import codecs
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from halo_client.conversation.state import ROLES, ConversationState

MAGIC: Final = b"HWLV"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sHHIIiId")
HEADER_SIZE: Final = HEADER.size  # 32
#: the longest message the page may send (an uploaded session is the big one)
MAX_COMMAND_BYTES: Final = 64 * 1024 * 1024
MAX_TEXT: Final = 200_000


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Send(_Command):
    type: Literal["send"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class Stop(_Command):
    type: Literal["stop"]


class ChangeSettings(_Command):
    """A partial settings file: {"tracker": {"decay": 0.01}, "view": {"scale": "log"}}."""

    type: Literal["settings"]
    changes: dict[str, Any]


class NewChat(_Command):
    type: Literal["new"]
    #: the system prompt of the new chat (None: the settings file's)
    system: Annotated[str, Field(max_length=MAX_TEXT)] | None = None


class Pin(_Command):
    type: Literal["pin"]
    sentence: int
    pinned: bool = True


class PruneSentence(_Command):
    type: Literal["prune_sentence"]
    sentence: int


class PruneNow(_Command):
    type: Literal["prune_now"]


class Restore(_Command):
    """Put back the pruned unit that holds `position`."""

    type: Literal["restore"]
    position: int


class SaveSession(_Command):
    type: Literal["save"]
    name: str


class OpenSession(_Command):
    type: Literal["open"]
    name: str
    #: open it even though it was saved with another model
    force: bool = False


class UploadSession(_Command):
    """A session file the user picked in the browser, as its parsed JSON."""

    type: Literal["upload"]
    session: dict[str, Any]
    name: str = "uploaded"
    force: bool = False


class ListSessions(_Command):
    type: Literal["sessions"]


class Export(_Command):
    type: Literal["export"]
    format: Literal["session", "html"]


class TokenInfo(_Command):
    type: Literal["token_info"]
    position: int


class TokenTable(_Command):
    """Every token's peak attention and the token it came from (the token dictionary's columns
    that only the UI server has), answered as `token_table`."""

    type: Literal["token_table"]


class Inspect(_Command):
    """The full attention frame of the generated token at `position`, fetched on demand."""

    type: Literal["inspect"]
    position: int
    layer: int | None = None  # None: the mean over layers
    head: int | None = None  # None: the mean over heads
    scale: Literal["log", "linear"] = "log"


class Resync(_Command):
    type: Literal["resync"]


Command = Annotated[
    Send | Stop | ChangeSettings | NewChat | Pin | PruneSentence | PruneNow | Restore | SaveSession | OpenSession
    | UploadSession | ListSessions | Export | TokenInfo | TokenTable | Inspect | Resync,
    Field(discriminator="type"),
]
COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


# ------------------------------------------------------------------------------- binary


def encode_levels(epoch: int, brightness: npt.NDArray[np.floating], bucket: npt.NDArray[np.uint8], *,
                  newest: int = -1, sent_ms: float = 0.0) -> bytes:
    """One `levels` message (module docstring)."""
    n = int(brightness.shape[0])
    if bucket.shape != (n,):
        raise ValueError(f"{n} brightness values but {bucket.shape} buckets")
    return b"".join((HEADER.pack(MAGIC, VERSION, HEADER_SIZE, epoch, n, newest, 0, sent_ms),
                     np.ascontiguousarray(brightness, "<f4").tobytes(),
                     np.ascontiguousarray(bucket, np.uint8).tobytes()))


def decode_levels(message: bytes) -> tuple[int, int, float, npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """(epoch, newest, sent_ms, brightness, buckets): the page's reading, for tests and tools."""
    magic, version, header_size, epoch, n, newest, _reserved, sent_ms = HEADER.unpack_from(message)
    if magic != MAGIC or version != VERSION or header_size != HEADER_SIZE:
        raise ValueError(f"not a levels message: {bytes(message[:8])!r}")
    if len(message) != HEADER_SIZE + 5 * n:
        raise ValueError(f"levels message of {len(message)} bytes for {n} positions")
    brightness = np.frombuffer(message, "<f4", n, HEADER_SIZE)
    buckets = np.frombuffer(message, np.uint8, n, HEADER_SIZE + 4 * n)
    return int(epoch), int(newest), float(sent_ms), brightness, buckets


# ------------------------------------------------------------------------------- text


def display_texts(pieces: Sequence[bytes]) -> list[str]:
    """What to draw for each of consecutive tokens: their bytes decoded as one stream, so a
    character split over two tokens is drawn by the token that completes it (the first draws
    nothing) and invalid bytes become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(p) for p in pieces]
    if texts:
        texts[-1] += decoder.decode(b"", final=True)
    return texts


def piece_label(piece: bytes) -> str:
    """A token's own text for the tooltip: the decoded piece, or its escaped bytes where it is
    not valid UTF-8 on its own (part of a character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in piece)


def rows(state: ConversationState, positions: npt.NDArray[np.int64],
         texts: Sequence[str] | None = None) -> dict[str, Any]:
    """The page's columns for `positions` (ascending): what it needs to draw and place each
    token. `texts` (from `display_texts`) for tokens the page has not drawn yet."""
    pos = np.asarray(positions, np.int64)
    out: dict[str, Any] = {
        "position": pos.tolist(),
        "token_id": state.column("token_id")[pos].tolist(),
        "role": [ROLES[r] for r in state.column("role")[pos].tolist()],
        "turn": state.column("turn")[pos].tolist(),
        "sentence": state.column("sentence")[pos].tolist(),
        "template": state.column("template")[pos].astype(np.int8).tolist(),
        "pinned": state.column("pinned")[pos].astype(np.int8).tolist(),
        "deleted": state.column("deleted")[pos].astype(np.int8).tolist(),
        "brightness": [round(float(b), 6) for b in state.brightness[pos].tolist()],
    }
    if texts is not None:
        if len(texts) != pos.size:
            raise ValueError(f"{len(texts)} texts for {pos.size} positions")
        out["text"] = list(texts)
    return out


def piece_b64(piece: bytes) -> str:
    return base64.b64encode(piece).decode("ascii")
