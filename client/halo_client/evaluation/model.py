"""The model in process, as the benchmark needs it: the turn protocol's tokens, and the logits
and attention of many positions at once.

A teacher-forced reply of n tokens is one forward pass returning n rows (what n decode steps
would return, at the cost of a prompt), and a request that shares a prefix with the previous
one computes only what follows the prefix. The reference backend does both natively
(`ReferenceBackend.prefill_rows`); any other `ModelBackend` gets the same rows from one prefill
and a decode per further row, which is slower but the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from halo_client.conversation.state import ConversationState, Role
from halo_client.conversation.template import ChatTemplate
from halo_client.conversation.turns import Part, Tokens, TurnBuilder
from halo_client.serving.backend import ModelBackend

F32 = npt.NDArray[np.float32]


@runtime_checkable
class RowsBackend(Protocol):
    def prefill_rows(self, input_ids: Sequence[int], rows: int, want_attention: bool) -> tuple[F32, F32 | None]: ...


def log_softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Row-wise log-softmax in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


class InProcessModel:
    """A `ModelBackend` driven by the turn protocol, with rows and a count of computed tokens."""

    def __init__(self, backend: ModelBackend) -> None:
        self.backend = backend
        self.info = backend.model_info()
        self.template = ChatTemplate(self.info.chat_template)
        self.stops = self.info.end_token_ids
        #: tokens run through the model (the benchmark's cost), and forward calls
        self.computed = 0
        self.calls = 0
        self._sequence: list[int] = []

    def builder(self) -> TurnBuilder:
        """A turn builder for a new conversation."""
        return TurnBuilder(self.info, self.template)

    def tokens(self, part: Part) -> Tokens:
        ids = self.backend.tokenize(part.text, part.special) if part.text else []
        return [(t, self.backend.token_bytes(t)) for t in ids]

    def add_message(self, state: ConversationState, turns: TurnBuilder, role: Role, text: str) -> None:
        plan = turns.plan_message(role, text)
        turns.add_message(state, plan, [self.tokens(p) for p in plan.parts])

    def piece(self, token: int) -> bytes:
        return self.backend.token_bytes(token)

    def rows(self, ids: Sequence[int], rows: int, want_attention: bool) -> tuple[F32, F32 | None]:
        """Logits `[rows, vocab]` and attention `[layers, heads, rows, ctx]` (row r sees the first
        `len(ids) - rows + r + 1` columns; the rest are 0) of the last `rows` positions of `ids`."""
        ids = list(ids)
        rows = max(1, min(rows, len(ids)))
        shared = np.minimum(len(self._sequence), len(ids))
        differs = np.flatnonzero(np.asarray(self._sequence[:shared]) != np.asarray(ids[:shared]))
        common = int(differs[0]) if differs.size else int(shared)
        self.computed += len(ids) - min(common, len(ids) - rows)
        self.calls += 1
        self._sequence = ids
        if isinstance(self.backend, RowsBackend):
            return self.backend.prefill_rows(ids, rows, want_attention)
        first = self.backend.prefill(ids[: len(ids) - rows + 1], want_attention)
        results = [first]
        for token in ids[len(ids) - rows + 1 :]:
            results.append(self.backend.decode(token, want_attention))
        logits = np.stack([r.logits for r in results]).astype(np.float32, copy=False)
        if not want_attention:
            return logits, None
        frames = [r.attention for r in results]
        if any(f is None for f in frames):
            raise ValueError("the backend returned no attention")
        layers, heads = frames[0].shape[:2]  # type: ignore[union-attr]
        attention = np.zeros((layers, heads, rows, len(ids)), np.float32)
        for r, frame in enumerate(frames):
            attention[:, :, r, : frame.shape[2]] = frame  # type: ignore[union-attr]
        return logits, attention

    def decode(self, token: int, want_attention: bool) -> tuple[F32, F32 | None]:
        """One more token after the last `rows`/`decode`: logits `[vocab]`, attention `[layers, heads, ctx]`."""
        result = self.backend.decode(token, want_attention)
        self._sequence.append(token)
        self.computed += 1
        self.calls += 1
        return result.logits, result.attention
