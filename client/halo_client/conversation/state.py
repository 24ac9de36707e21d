"""`ConversationState`: every token of a conversation, tokenized once, kept column-wise.

This module owns the state's invariants: it is the only writer of the columns. The pruner
marks and unmarks deletions through `mark_deleted` / `undelete`, sessions rebuild a state
through `from_arrays` (which checks everything a saved state must satisfy), and the tracker
writes brightness in place through the `brightness` view.

A token's position is its row: rows are only ever appended, so positions are unique and never
reused, also after pruning (pruning only sets `deleted`). The exceptions are undone work: an
exchange whose reply never began (`rollback` to the `checkpoint` taken before the message), or
a reply whose generation failed (`discard_reply`); their positions were never saved, and go to
what comes next.
Columns are numpy arrays grown geometrically, so 100,000 tokens cost a few megabytes and every
bulk question (which tokens are active, which sentence has the dimmest token) is one
vectorized expression.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from halo_client.conversation.segmentation import segment
from halo_client.errors import HaloError

Role = Literal["system", "user", "assistant"]
ROLES: Final[tuple[Role, ...]] = ("system", "user", "assistant")
#: why a token is deleted
DeleteReason = Literal["pruned", "empty message"]
REASONS: Final = ("", "pruned", "empty message")
#: what ranked a pruned unit (its audit score is that ranking's): the tracker's brightness, the
#: newest message's attention in the retrieval heads (the chat's recall pass), or another score
#: a caller gave (a benchmark policy)
RankedBy = Literal["brightness", "question", "score"]
RANKINGS: Final = ("brightness", "question", "score")
NOT_DELETED: Final = -1

#: name -> (dtype, value of a new row)
COLUMNS: Final[dict[str, tuple[type, object]]] = {
    "token_id": (np.int32, 0),
    "role": (np.int8, 0),
    "turn": (np.int32, 0),
    "sentence": (np.int32, 0),
    "line": (np.int32, 0),
    "template": (np.bool_, False),
    "pinned": (np.bool_, False),
    "brightness": (np.float32, 0.0),
    "deleted": (np.bool_, False),
    "deleted_turn": (np.int32, NOT_DELETED),
    "deleted_score": (np.float32, np.nan),
    "deleted_reason": (np.int8, 0),
    "deleted_ranked_by": (np.int8, 0),
    #: the turn at which memory last brought the token back (NOT_DELETED: never)
    "recalled_turn": (np.int32, NOT_DELETED),
}


class ConversationError(HaloError):
    """The conversation was asked to do something that would corrupt it."""


@dataclass(frozen=True)
class TokenRow:
    """A read-only view of one token."""

    position: int
    token_id: int
    piece: bytes
    role: Role
    turn: int
    sentence: int
    line: int
    template: bool
    pinned: bool
    brightness: float
    deleted: bool
    deleted_turn: int | None
    deleted_score: float | None
    deleted_reason: str | None
    deleted_ranked_by: str | None
    recalled_turn: int | None


@dataclass
class Turn:
    turn_id: int
    role: Role
    start: int  # first position
    end: int  # one past the last position
    complete: bool


@dataclass(frozen=True)
class Checkpoint:
    """A state as it was (`ConversationState.checkpoint`): copies, never views."""

    n: int
    columns: dict[str, npt.NDArray[Any]]
    pieces: int
    turns: tuple[Turn, ...]
    next_ids: tuple[int, int]
    start: float | None
    initial_brightness: float


class ConversationState:
    def __init__(self, initial_brightness: float = 1.0, capacity: int = 1024) -> None:
        self.initial_brightness = initial_brightness
        self._n = 0
        self._cols: dict[str, npt.NDArray[Any]] = {
            name: np.full(capacity, fill, dtype) for name, (dtype, fill) in COLUMNS.items()
        }
        self.pieces: list[bytes] = []
        self.turns: list[Turn] = []
        self._next_sentence = 0
        self._next_line = 0
        self._start: float | None = None  # fixed while a reply streams (per token, no O(n) mean)

    # ------------------------------------------------------------------ columns

    def __len__(self) -> int:
        return self._n

    def column(self, name: str) -> npt.NDArray[Any]:
        """A read-only view of one column over every token (deleted ones included)."""
        view: npt.NDArray[Any] = self._cols[name][: self._n].view()
        view.flags.writeable = False
        return view

    def _col(self, name: str) -> npt.NDArray[Any]:
        return self._cols[name][: self._n]

    @property
    def brightness(self) -> npt.NDArray[np.float32]:
        """Writable: the tracker updates it in place."""
        return self._cols["brightness"][: self._n]

    def _grow(self, extra: int) -> None:
        need = self._n + extra
        capacity = len(self._cols["token_id"])
        if need <= capacity:
            return
        while capacity < need:
            capacity *= 2
        for name, (dtype, fill) in COLUMNS.items():
            grown: npt.NDArray[Any] = np.full(capacity, fill, dtype)
            grown[: self._n] = self._cols[name][: self._n]
            self._cols[name] = grown

    def start_brightness(self) -> float:
        """What a new token starts at: the mean brightness of the active content, and at least
        `initial_brightness`. New text has not been looked back at yet (attention from within
        min_distance does not count), so it starts level with the average rather than at the
        bottom, where the first prune would take it before the model had a chance to use it."""
        c = self._cols
        content = ~c["deleted"][: self._n] & ~c["template"][: self._n]
        mean = float(c["brightness"][: self._n][content].mean()) if content.any() else 0.0
        return max(self.initial_brightness, mean)

    def row(self, position: int) -> TokenRow:
        if not 0 <= position < self._n:
            raise IndexError(f"no token at position {position} (conversation has {self._n})")
        c = self._cols
        deleted = bool(c["deleted"][position])
        return TokenRow(
            position=position, token_id=int(c["token_id"][position]), piece=self.pieces[position],
            role=ROLES[int(c["role"][position])], turn=int(c["turn"][position]),
            sentence=int(c["sentence"][position]), line=int(c["line"][position]),
            template=bool(c["template"][position]), pinned=bool(c["pinned"][position]),
            brightness=float(c["brightness"][position]), deleted=deleted,
            deleted_turn=int(c["deleted_turn"][position]) if deleted else None,
            deleted_score=float(c["deleted_score"][position]) if deleted else None,
            deleted_reason=REASONS[int(c["deleted_reason"][position])] if deleted else None,
            deleted_ranked_by=RANKINGS[int(c["deleted_ranked_by"][position])] if deleted else None,
            recalled_turn=int(c["recalled_turn"][position]) if c["recalled_turn"][position] >= 0 else None,
        )

    def rows(self) -> Iterator[TokenRow]:
        return (self.row(p) for p in range(self._n))

    # ------------------------------------------------------------------ adding

    def _append(self, tokens: Sequence[tuple[int, bytes]], role: Role, turn: int, template: bool) -> None:
        if not tokens:
            return
        start, k = self._n, len(tokens)
        begin = self._start if self._start is not None else self.start_brightness()
        self._grow(k)
        self._n += k
        sl = slice(start, start + k)
        c = self._cols
        c["token_id"][sl] = [t for t, _ in tokens]
        c["role"][sl] = ROLES.index(role)
        c["turn"][sl] = turn
        c["template"][sl] = template
        c["brightness"][sl] = begin
        self.pieces.extend(p for _, p in tokens)
        if template:
            # template tokens get sentence and line ids of their own: never a unit to prune
            c["sentence"][sl] = -1
            c["line"][sl] = -1

    def add_message(
        self,
        role: Role,
        content: Sequence[tuple[int, bytes]],
        prefix: Sequence[tuple[int, bytes]] = (),
        suffix: Sequence[tuple[int, bytes]] = (),
    ) -> int:
        """Append a whole message: template prefix, content, template suffix. Returns its turn."""
        if self.turns and not self.turns[-1].complete:
            raise ConversationError("a reply is still open: end it before adding a message")
        turn = self._open_turn(role, prefix)
        self._append_content(content, role, turn)
        self._append(suffix, role, turn, template=True)
        self.turns[-1].end = self._n
        self.turns[-1].complete = True
        return turn

    def _open_turn(self, role: Role, prefix: Sequence[tuple[int, bytes]]) -> int:
        turn = len(self.turns)
        self.turns.append(Turn(turn, role, self._n, self._n, complete=False))
        self._append(prefix, role, turn, template=True)
        self.turns[-1].end = self._n
        return turn

    def _append_content(self, content: Sequence[tuple[int, bytes]], role: Role, turn: int) -> None:
        if not content:
            return
        start = self._n
        self._append(content, role, turn, template=False)
        sentences, lines = segment([p for _, p in content])
        sl = slice(start, self._n)
        self._cols["sentence"][sl] = sentences + self._next_sentence
        self._cols["line"][sl] = lines + self._next_line
        self._next_sentence += int(sentences.max()) + 1
        self._next_line += int(lines.max()) + 1

    def begin_reply(self, prefix: Sequence[tuple[int, bytes]]) -> int:
        """Open the assistant's reply with the template's generation prompt."""
        if self.turns and not self.turns[-1].complete:
            raise ConversationError("a reply is already open")
        turn = self._open_turn("assistant", prefix)
        self._start = self.start_brightness()
        return turn

    def add_generated(self, token_id: int, piece: bytes) -> int:
        """A streamed token of the open reply; returns its position. Sentences are assigned
        when the reply ends (a sentence is only known once its end has streamed)."""
        turn = self._open_reply()
        self._append([(token_id, piece)], "assistant", turn.turn_id, template=False)
        self._cols["sentence"][self._n - 1] = self._next_sentence  # provisional
        self._cols["line"][self._n - 1] = self._next_line
        turn.end = self._n
        return self._n - 1

    def end_reply(self, suffix: Sequence[tuple[int, bytes]], stop_is_template: bool = False) -> None:
        """Close the open reply with the template's suffix. With `stop_is_template`, the last
        generated token (e.g. `<|im_end|>`) is the template's own end marker, and is marked so."""
        turn = self._open_reply()
        first_content = turn.start + int(self._col("template")[turn.start : turn.end].sum())
        if stop_is_template and turn.end > first_content:
            last = turn.end - 1
            self._cols["template"][last] = True
            self._cols["sentence"][last] = -1
            self._cols["line"][last] = -1
        content_end = turn.end - (1 if stop_is_template and turn.end > first_content else 0)
        if content_end > first_content:
            pieces = self.pieces[first_content:content_end]
            sentences, lines = segment(pieces)
            sl = slice(first_content, content_end)
            self._cols["sentence"][sl] = sentences + self._next_sentence
            self._cols["line"][sl] = lines + self._next_line
            self._next_sentence += int(sentences.max()) + 1
            self._next_line += int(lines.max()) + 1
        self._append(suffix, "assistant", turn.turn_id, template=True)
        turn.end = self._n
        turn.complete = True
        self._start = None

    def discard_reply(self) -> None:
        """Forget an open reply whose generation failed: the conversation is as before it."""
        turn = self._open_reply()
        self._n = turn.start
        del self.pieces[turn.start :]
        for name, (_dtype, fill) in COLUMNS.items():
            self._cols[name][turn.start : turn.start + (turn.end - turn.start)] = fill
        self.turns.pop()
        self._start = None

    def checkpoint(self) -> Checkpoint:
        """Everything the state is now, to `rollback` to: a user's message that cannot be
        answered is undone with everything it set off (recalls, prunes, brightness)."""
        return Checkpoint(self._n, {name: self._cols[name][: self._n].copy() for name in COLUMNS},
                          len(self.pieces), tuple(Turn(t.turn_id, t.role, t.start, t.end, t.complete)
                                                  for t in self.turns),
                          (self._next_sentence, self._next_line), self._start, self.initial_brightness)

    def rollback(self, checkpoint: Checkpoint) -> None:
        """Back to exactly the state of `checkpoint` (taken from this state, which has only
        grown or changed flags since): rows after it are forgotten, every column restored."""
        if checkpoint.n > len(self.pieces) or checkpoint.pieces != checkpoint.n:
            raise ConversationError("this checkpoint is not of this conversation")
        end = self._n
        self._grow(max(0, checkpoint.n - self._n))
        for name, (_dtype, fill) in COLUMNS.items():
            self._cols[name][: checkpoint.n] = checkpoint.columns[name]
            self._cols[name][checkpoint.n : max(end, checkpoint.n)] = fill
        self._n = checkpoint.n
        del self.pieces[checkpoint.n :]
        self.turns = [Turn(t.turn_id, t.role, t.start, t.end, t.complete) for t in checkpoint.turns]
        self._next_sentence, self._next_line = checkpoint.next_ids
        self._start = checkpoint.start
        self.initial_brightness = checkpoint.initial_brightness

    def _open_reply(self) -> Turn:
        if not self.turns or self.turns[-1].complete or self.turns[-1].role != "assistant":
            raise ConversationError("no reply is open: call begin_reply first")
        return self.turns[-1]

    # ------------------------------------------------------------------ reading

    def active_mask(self) -> npt.NDArray[np.bool_]:
        return ~self._cols["deleted"][: self._n]

    def active_positions(self) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.active_mask())

    @property
    def active_count(self) -> int:
        return int(self._n - np.count_nonzero(self._cols["deleted"][: self._n]))

    def input_ids(self) -> list[int]:
        """The non-deleted tokens in position order: what the server gets as `input_ids`."""
        ids: list[int] = self._cols["token_id"][: self._n][self.active_mask()].tolist()
        return ids

    def frame_columns(self, max_length: int) -> FrameColumns:
        """Column -> position map for a request built from `input_ids()` now (call it right
        after building the request; generated tokens are added to it as they stream)."""
        return FrameColumns(self.active_positions(), max_length)

    def pin(self, sentence: int, pinned: bool = True) -> None:
        """Pin (or unpin) a sentence: pinned content is never pruned."""
        mask = self._col("sentence") == sentence
        if not mask.any():
            raise ConversationError(f"no sentence {sentence}")
        self._cols["pinned"][: self._n][mask] = pinned

    # ------------------------------------------------------------------ deleting

    def mark_deleted(self, positions: npt.NDArray[np.int64], *, turn: int, score: float,
                     reason: DeleteReason, ranked_by: RankedBy = "brightness") -> None:
        """Soft-delete `positions` with their audit trail: the turn it happened in, the unit's
        score (NaN when it has none) and why."""
        c = self._cols
        c["deleted"][positions] = True
        c["deleted_turn"][positions] = turn
        c["deleted_score"][positions] = score
        c["deleted_reason"][positions] = REASONS.index(reason)
        c["deleted_ranked_by"][positions] = RANKINGS.index(ranked_by)

    def undelete(self, positions: npt.NDArray[np.int64]) -> None:
        """Make `positions` active again and clear their audit trail."""
        c = self._cols
        c["deleted"][positions] = False
        c["deleted_turn"][positions] = NOT_DELETED
        c["deleted_score"][positions] = np.nan
        c["deleted_reason"][positions] = 0
        c["deleted_ranked_by"][positions] = 0

    def mark_recalled(self, positions: npt.NDArray[np.int64], *, turn: int) -> None:
        """Record that memory brought `positions` back (active again) at `turn`."""
        if self._cols["deleted"][positions].any():
            raise ConversationError("only an active token can be marked recalled: undelete it first")
        self._cols["recalled_turn"][positions] = turn

    # ------------------------------------------------------------------ saved states

    @property
    def next_ids(self) -> tuple[int, int]:
        """The sentence and line ids the next content will start at (saved with the state)."""
        return self._next_sentence, self._next_line

    @classmethod
    def from_arrays(cls, columns: Mapping[str, npt.NDArray[Any]], pieces: list[bytes], turns: list[Turn],
                    next_ids: tuple[int, int], initial_brightness: float = 1.0) -> ConversationState:
        """A state from saved columns, after checking every invariant a conversation keeps;
        anything else raises `ConversationError` and builds nothing."""
        n = len(pieces)
        if set(columns) != set(COLUMNS):
            raise ConversationError(f"the columns are {sorted(columns)}, expected {sorted(COLUMNS)}")
        arrays: dict[str, npt.NDArray[Any]] = {name: np.asarray(columns[name], dtype)
                                               for name, (dtype, _fill) in COLUMNS.items()}
        for name, array in arrays.items():
            if array.shape != (n,):
                raise ConversationError(f"column {name} has shape {array.shape}, expected ({n},)")
        _check_consistent(arrays, turns, n, next_ids, initial_brightness)
        state = cls(initial_brightness=initial_brightness, capacity=max(n, 16))
        state._n = n
        for name, array in arrays.items():
            state._cols[name][:n] = array
        state.pieces = list(pieces)
        state.turns = [Turn(t.turn_id, t.role, t.start, t.end, t.complete) for t in turns]
        state._next_sentence, state._next_line = next_ids
        return state

    def text(self, positions: npt.NDArray[np.int64] | Sequence[int]) -> str:
        return b"".join(self.pieces[int(p)] for p in positions).decode("utf-8", errors="replace")


class FrameColumns:
    """Maps a generation's frame columns to positions: the request's active positions, then
    each generated token's position as it arrives (`columns_to_positions` of the design)."""

    def __init__(self, request_positions: npt.NDArray[np.int64], max_length: int) -> None:
        self.n_input = len(request_positions)
        self._positions = np.empty(self.n_input + max_length, np.int64)
        self._positions[: self.n_input] = request_positions
        self._generated = 0

    def add_generated(self, position: int) -> None:
        if self.n_input + self._generated >= len(self._positions):
            raise ConversationError(f"more generated tokens than the {len(self._positions) - self.n_input} "
                                    "asked for")
        self._positions[self.n_input + self._generated] = position
        self._generated += 1

    def for_frame(self, ctx: int) -> npt.NDArray[np.int64]:
        """Positions of columns 0..ctx-1 of a frame (ctx = n_input + the token's index)."""
        if not self.n_input <= ctx <= self.n_input + self._generated:
            raise ConversationError(f"frame ctx {ctx} does not fit a request of {self.n_input} "
                                    f"tokens with {self._generated} generated")
        return self._positions[:ctx]


def _check_consistent(arrays: Mapping[str, npt.NDArray[Any]], turns: list[Turn], n: int,
                      next_ids: tuple[int, int], initial_brightness: float) -> None:
    """Values a saved conversation can have: anything else would corrupt it once loaded."""
    bad: Callable[[str], ConversationError] = ConversationError
    if any(t.role not in ROLES or not 0 <= t.start <= t.end <= n for t in turns):
        raise bad("its turns do not fit its tokens")
    # turns tile the tokens in order, each a whole message; only the last may be open
    if [t.turn_id for t in turns] != list(range(len(turns))):
        raise bad("its turns are out of order")
    bounds = [0] + [x for t in turns for x in (t.start, t.end)] + [n]
    if any(a != b for a, b in zip(bounds[::2], bounds[1::2], strict=True)):
        raise bad("its turns do not tile its tokens")
    if any(not t.complete for t in turns):
        raise bad("it holds a reply that never ended")
    expected_turn = np.repeat(np.arange(len(turns)), [t.end - t.start for t in turns])
    if not np.array_equal(arrays["turn"], expected_turn):
        raise bad("its tokens' turns disagree with its turns")
    roles = np.repeat([ROLES.index(t.role) for t in turns], [t.end - t.start for t in turns])
    if not np.array_equal(arrays["role"], roles.astype(arrays["role"].dtype)):
        raise bad("its tokens' roles disagree with its turns")
    if not np.isfinite(initial_brightness) or initial_brightness < 0:
        raise bad("its initial brightness is not a finite number >= 0")
    if not n:
        return
    if arrays["token_id"].min() < 0:
        raise bad("it has a negative token id")
    if not np.isfinite(arrays["brightness"]).all():
        raise bad("it has a brightness that is not a finite number")
    reasons = arrays["deleted_reason"]
    if reasons.min() < 0 or reasons.max() >= len(REASONS):
        raise bad("it has an unknown reason for a deletion")
    ranked_by = arrays["deleted_ranked_by"]
    if ranked_by.min() < 0 or ranked_by.max() >= len(RANKINGS):
        raise bad("it has an unknown ranking for a deletion")
    deleted = arrays["deleted"]
    if not np.array_equal(deleted, reasons > 0) or not np.array_equal(deleted, arrays["deleted_turn"] >= 0):
        raise bad("its audit trail disagrees with its deleted tokens")
    if arrays["recalled_turn"].min() < NOT_DELETED or arrays["recalled_turn"].max() >= max(len(turns), 1):
        raise bad("it has a recall at a turn it does not have")
    if int(arrays["sentence"].max()) >= next_ids[0] or int(arrays["line"].max()) >= next_ids[1]:
        raise bad("its sentence or line ids run past its next ids")
