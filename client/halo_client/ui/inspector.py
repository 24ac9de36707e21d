"""The inspector: one generated token's full attention frame, fetched on demand.

The chat streams the smallest frames its tracker needs (`Chat.frame_layout`); the inspector
wants every head of every layer, but only for the token the user clicked. The server is
stateless and greedy-deterministic, and a token's frame is the attention of the query that
produced it, so the frame of generated token i of a reply is the single frame of a new request
with `input_ids` = the reply's input_ids + its generated tokens[:i], `max_length` 1 and
`attention_layout` "full": the same query over the same columns (tests/ui/test_inspector.py
checks this against the reference model and the mock). For that, each reply's request
positions and generated positions are recorded (`ReplyRecords`; kept in the session's meta, so a
saved chat can be inspected after it is opened again), and fetched frames are cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from halo_client.client import KoboldClient, TokenEvent
from halo_client.conversation.state import ConversationState
from halo_client.display.scale import scaling_tokens
from halo_client.errors import HaloError, ProtocolError
from halo_client.frame import AttentionFrame
from halo_client.ui.palette import buckets

CACHED_FRAMES: Final = 8
#: the log scale spans this many decades below the strongest content column
LOG_DECADES: Final = 3.0
TOP: Final = 8
META_KEY: Final = "workbench_replies"


class InspectorError(HaloError):
    """The token cannot be inspected (not generated here, or the frame did not come)."""


@dataclass(frozen=True)
class ReplyRecord:
    #: positions of the request's input_ids, in order
    request: npt.NDArray[np.int64]
    #: positions of the generated tokens, in order
    generated: tuple[int, ...]

    def columns(self, index: int) -> npt.NDArray[np.int64]:
        """The positions of the columns of generated token `index`'s frame."""
        return np.concatenate([self.request, np.asarray(self.generated[:index], np.int64)])


def _runs(positions: npt.NDArray[np.int64]) -> list[list[int]]:
    """Ascending positions as [start, end) runs: a request is a few long runs around the pruned gaps."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.r_[0, breaks]
    ends = np.r_[breaks, positions.size]
    return [[int(positions[a]), int(positions[b - 1]) + 1] for a, b in zip(starts, ends, strict=True)]


class ReplyRecords:
    """Which request produced each generated token."""

    def __init__(self) -> None:
        self._records: list[ReplyRecord] = []
        self._by_position: dict[int, tuple[int, int]] = {}  # generated position -> (record, index)

    def add(self, record: ReplyRecord) -> None:
        for index, position in enumerate(record.generated):
            self._by_position[position] = (len(self._records), index)
        self._records.append(record)

    def find(self, position: int) -> tuple[ReplyRecord, int] | None:
        found = self._by_position.get(position)
        return None if found is None else (self._records[found[0]], found[1])

    def to_meta(self) -> list[dict[str, Any]]:
        return [{"request": _runs(r.request), "generated": list(r.generated)} for r in self._records]

    @classmethod
    def from_meta(cls, meta: Any, state: ConversationState) -> ReplyRecords:
        """The records a session kept; records that do not fit `state` are left out (a session
        edited by hand must not make the inspector ask for nonsense)."""
        records = cls()
        if not isinstance(meta, list):
            return records
        n = len(state)
        for item in meta:
            try:
                request = np.concatenate([np.arange(int(a), int(b), dtype=np.int64) for a, b in item["request"]]
                                         or [np.zeros(0, np.int64)])
                generated = tuple(int(p) for p in item["generated"])
            except (KeyError, TypeError, ValueError):
                continue
            every = np.concatenate([request, np.asarray(generated, np.int64)])
            if every.size and (every.min() < 0 or every.max() >= n or np.any(np.diff(every) <= 0)):
                continue
            records.add(ReplyRecord(request, generated))
        return records


async def fetch_frame(client: KoboldClient, input_ids: Sequence[int]) -> AttentionFrame:
    """The full frame of the query at the end of `input_ids`: one greedy token, its frame."""
    frame: AttentionFrame | None = None
    async with client.generate_stream(list(input_ids), max_length=1, temperature=0.0, return_attention=True,
                                      attention_layout="full") as stream:
        async for event in stream:
            if isinstance(event, TokenEvent) and event.index == 0:
                frame = event.attention
    if frame is None:
        raise ProtocolError("the server answered the inspector's request without an attention frame")
    return frame


class Inspector:
    def __init__(self) -> None:
        self.records = ReplyRecords()
        self._frames: OrderedDict[int, tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]] = OrderedDict()

    def reset(self, records: ReplyRecords | None = None) -> None:
        self.records = records or ReplyRecords()
        self._frames.clear()

    def request_for(self, state: ConversationState, position: int) -> tuple[list[int], npt.NDArray[np.int64]]:
        """The input_ids that reproduce the frame of the generated token at `position`, and the
        positions of that frame's columns."""
        found = self.records.find(position)
        if found is None:
            raise InspectorError(f"the token at position {position} was not generated in a reply this workbench "
                                 "recorded: only generated tokens have a frame")
        record, index = found
        columns = record.columns(index)
        input_ids: list[int] = state.column("token_id")[columns].tolist()
        return input_ids, columns

    async def frame(self, client: KoboldClient, state: ConversationState,
                    position: int) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]:
        """`[layers, heads, ctx]` and the column positions, cached."""
        cached = self._frames.get(position)
        if cached is not None:
            self._frames.move_to_end(position)
            return cached
        input_ids, columns = self.request_for(state, position)
        frame = await fetch_frame(client, input_ids)
        if frame.ctx != columns.size:
            raise ProtocolError(f"the inspector's frame has {frame.ctx} columns for {columns.size} input tokens")
        self._frames[position] = (frame.values, columns)
        while len(self._frames) > CACHED_FRAMES:
            self._frames.popitem(last=False)
        return frame.values, columns


def view(values: npt.NDArray[np.floating], columns: npt.NDArray[np.int64], state: ConversationState, *,
         layer: int | None, head: int | None, scale: Literal["log", "linear"]) -> dict[str, Any]:
    """What the page draws for a frame: the selected layer/head (None: the mean) over the
    context, as values and colour buckets, the strongest columns, and the layers x heads
    overview (each head's share of attention on content, i.e. not on template or system text)."""
    layers, heads, _ctx = values.shape
    if layer is not None and not 0 <= layer < layers:
        raise InspectorError(f"layer {layer} is not in 0..{layers - 1}")
    if head is not None and not 0 <= head < heads:
        raise InspectorError(f"head {head} is not in 0..{heads - 1}")
    chosen = values if layer is None else values[layer : layer + 1]
    chosen = chosen if head is None else chosen[:, head : head + 1]
    attention = chosen.mean(axis=(0, 1), dtype=np.float32)
    content = scaling_tokens(state, columns)
    overview = values[:, :, content].sum(axis=2, dtype=np.float32) if content.any() else np.zeros((layers, heads))
    reference = attention[content] if content.any() else attention
    top = float(reference.max()) if reference.size else 0.0
    if top <= 0.0:
        levels = np.zeros_like(attention)
    elif scale == "linear":
        levels = np.clip(attention / top, 0.0, 1.0)
    else:
        floor = top * 10.0 ** -LOG_DECADES
        levels = np.clip(np.log10(np.maximum(attention, floor) / floor) / LOG_DECADES, 0.0, 1.0)
    strongest = np.argsort(-attention, kind="stable")[:TOP]
    return {
        "layers": layers, "heads": heads, "layer": layer, "head": head, "scale": scale,
        "positions": columns.tolist(),
        "values": [float(f"{v:.6g}") for v in attention.tolist()],
        "buckets": buckets(levels).tolist(),
        "top": [{"position": int(columns[j]), "value": float(attention[j]),
                 "text": state.text([int(columns[j])])} for j in strongest.tolist()],
        "overview": [[round(float(v), 5) for v in row] for row in overview.tolist()],
    }
