"""The pruner: when a conversation outgrows its budget, remove its dimmest sentences.

Units are sentences (default), lines or whole turns. A unit's score is the **max** brightness
of its active tokens (default: one token the model keeps using keeps its sentence) or the
mean. The pruner repeatedly removes the lowest-scoring unit until the active token count is
within the budget, never touching protected content: the system prompt, the current user
message, the reply in progress, the latest exchanges (`protect_exchanges`, default 1: the last
user message and the reply to it, so a reply is never pruned right after it was shown),
template tokens, and anything pinned. The sentences reaching into the newest share of the
budget (`recent_share`, H2O's recent window) go last, oldest first, and only if nothing else is
left. A message whose content is gone entirely takes its template with it; otherwise the
template stays around what is left.

Pruning is a soft delete with an audit trail (turn, score, reason); `restore` undoes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from halo_client.conversation.state import (
    RANKINGS,
    REASONS,
    ROLES,
    ConversationError,
    ConversationState,
    RankedBy,
)

Granularity = Literal["sentence", "line", "turn"]
Reduce = Literal["max", "mean"]
#: what ranks the sentences the pruner chooses among: `question`, the newest message's attention
#: in the model's retrieval heads (`conversation.question`; brightness where the model's heads
#: are unknown or the server sends no full frames), or `brightness`, the tracker's
Score = Literal["question", "brightness"]


class PrunerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: prune once the active token count exceeds this; 0 turns pruning off
    max_context_tokens: int = Field(0, ge=0)
    granularity: Granularity = "sentence"
    reduce: Reduce = "max"
    #: the latest exchanges (a user message and the reply to it) that are never pruned; 0
    #: protects the user message only while it is being answered
    protect_exchanges: int = Field(1, ge=0)
    #: the share of the budget kept for the newest text whatever its score (H2O's recent window):
    #: the sentences reaching into the newest `recent_share` of the budget are pruned last, and
    #: the score chooses among the older ones. The next reply depends most on what was just said;
    #: the pruning benchmark's fidelity measure chose 0.75 (docs/pruning.md)
    recent_share: float = Field(0.75, ge=0, le=1)
    #: what ranks the older sentences (`Score`): the pruning benchmark's tuning split chose the
    #: question's attention (the last prompt row, in retrieval heads) over brightness for the
    #: lowest KL at half the budget (docs/pruning.md)
    score: Score = "question"


@dataclass(frozen=True)
class PruneEvent:
    """One unit removed (or, from `restore`, put back)."""

    kind: Granularity
    unit: int  # sentence, line or turn id
    turn: int
    positions: tuple[int, ...]
    score: float
    tokens_freed: int
    text: str
    restored: bool = False
    #: the message's template, when this unit was the last of its message's content to go (it
    #: went too, counted in `tokens_freed`); `restore` brings it back with the unit
    template: tuple[int, ...] = ()
    #: what ranked the unit, so that its `score` is read as what it is
    ranked_by: RankedBy = "brightness"

    @property
    def size(self) -> int:
        """The unit's own tokens."""
        return len(self.positions)


@dataclass(frozen=True)
class PrunedSpans:
    """The units now pruned: their positions, in order, unit after unit."""

    positions: npt.NDArray[np.int64]
    #: where each unit starts in `positions`
    starts: npt.NDArray[np.int64]
    #: each unit's id (sentence, line or turn)
    units: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.starts.size)

    def unit(self, i: int) -> npt.NDArray[np.int64]:
        end = self.starts[i + 1] if i + 1 < self.starts.size else self.positions.size
        return self.positions[self.starts[i] : end]


@dataclass
class PruneResult:
    events: list[PruneEvent] = field(default_factory=list)
    active_before: int = 0
    active_after: int = 0
    budget: int = 0
    #: only protected content is left and it is still over budget
    over_budget: bool = False

    @property
    def message(self) -> str:
        if self.over_budget:
            return (f"{self.active_after} tokens remain after pruning, over the budget of {self.budget}: "
                    "all that is left is protected (system prompt, current message, template, pinned); "
                    "raise the budget, unpin, or shorten the system prompt")
        return f"pruned {len(self.events)} units, {self.active_before} -> {self.active_after} tokens"


#: how a prune line names a unit's score, by what ranked it
RANKING_LABELS: Final[dict[str, str]] = {"brightness": "brightness", "question": "question's attention",
                                          "score": "score"}

#: a prune of more units than this is reported as one line (`summary`); the units: `/pruned`
LISTED_ONE_BY_ONE: Final = 3


def unit_starts(ids: npt.NDArray[np.integer], positions: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Where each unit begins among `positions` (ascending), given each position's unit id: a new
    unit at every change of id or gap in the positions."""
    if not positions.size:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | (np.diff(positions) != 1)]).astype(np.int64)


def summary(events: Sequence[PruneEvent]) -> str:
    """Many units pruned at once, in one line: how many, their tokens, their brightness."""
    units = [e for e in events if not e.restored]
    kinds = {e.kind for e in units}
    kind = next(iter(kinds)) if len(kinds) == 1 else "unit"
    tokens = sum(e.tokens_freed for e in units)
    scored = [e for e in units if not math.isnan(e.score)]
    rankings = {e.ranked_by for e in scored}
    name = RANKING_LABELS[next(iter(rankings))] if len(rankings) == 1 else "score"
    scores = [e.score for e in scored]
    ranked = f", {name} {min(scores):.2f} to {max(scores):.2f}" if scores else ""
    return f"{len(units):,} {kind}{'' if len(units) == 1 else 's'} ({tokens:,} tokens{ranked})"


def _content_text(state: ConversationState, positions: npt.NDArray[np.int64]) -> str:
    """What a unit says: its text without template markup (a whole turn's has some)."""
    template = state.column("template")
    return state.text(positions[~template[positions]])


def _with_templates(events: list[PruneEvent], dropped: dict[int, npt.NDArray[np.int64]]) -> list[PruneEvent]:
    """`events` with each emptied message's template folded into the event of its last unit to go:
    a template is never a unit of its own. (A message emptied without an event of this call, which
    only a hand-edited state can hold, keeps a template-only event.)"""
    out = list(events)
    for turn, positions in dropped.items():
        last = max((i for i, e in enumerate(out) if e.turn == turn and not e.template), default=None)
        if last is None:
            out.append(PruneEvent("turn", turn, turn, tuple(positions.tolist()), float("nan"), int(positions.size), ""))
            continue
        e = out[last]
        out[last] = dataclasses.replace(e, template=tuple(positions.tolist()),
                                        tokens_freed=e.tokens_freed + int(positions.size))
    return out


def _droppable_messages(state: ConversationState, protected: npt.NDArray[np.bool_]) -> tuple[
        Callable[[npt.NDArray[np.bool_]], npt.NDArray[np.int64]], npt.NDArray[np.bool_]]:
    """Per turn, whether its template goes once its content is gone: a complete message with
    content, none of it protected, whose template is still there. Also returns the per-turn
    counter of a token mask it uses."""
    n_turns = len(state.turns)
    turn, template = state.column("turn"), state.column("template")

    def per_turn(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
        return np.bincount(turn[mask], minlength=n_turns)

    complete = np.fromiter((t.complete for t in state.turns), bool, n_turns)
    droppable = (complete & (per_turn(~template) > 0) & (per_turn(~template & protected) == 0)
                 & (per_turn(template & state.active_mask()) > 0))
    return per_turn, droppable


class Pruner:
    def __init__(self, settings: PrunerSettings | None = None) -> None:
        self.settings = settings or PrunerSettings()

    def protected_mask(self, state: ConversationState,
                       extra_turns: tuple[int, ...] = ()) -> npt.NDArray[np.bool_]:
        """Tokens the pruner must not remove on their own."""
        n = len(state)
        turn = state.column("turn")
        mask: npt.NDArray[np.bool_] = state.column("template").copy() | state.column("pinned")
        protected_turns = set(extra_turns)
        mask |= state.column("role") == ROLES.index("system")
        if state.turns:
            last = state.turns[-1]
            if not last.complete:
                protected_turns.add(last.turn_id)  # the reply in progress
            users = [t.turn_id for t in state.turns if t.role == "user"]
            if users:
                if users[-1] >= len(state.turns) - 2 and (not last.complete or last.role == "user"):
                    protected_turns.add(users[-1])  # the message being answered (or about to be)
                if self.settings.protect_exchanges:
                    first = users[-min(self.settings.protect_exchanges, len(users))]
                    protected_turns.update(range(first, len(state.turns)))  # the latest exchanges
        if protected_turns and n:
            mask |= np.isin(turn, np.fromiter(protected_turns, np.int32))
        return mask

    def prune(self, state: ConversationState, budget: int | None = None, *,
              current_turn: int | None = None, scores: npt.NDArray[np.floating] | None = None,
              protect: npt.NDArray[np.bool_] | None = None, ranked_by: RankedBy | None = None) -> PruneResult:
        """Remove the dimmest units until `state.active_count <= budget` (default: the
        settings' max_context_tokens; 0 = off). `scores`: one per position, in place of
        brightness (another policy's view of what matters); `protect`: positions that must
        stay this time (e.g. what memory just recalled); `ranked_by`: what `scores` are (the
        audit trail and every prune line name it; "score" when not said)."""
        budget = self.settings.max_context_tokens if budget is None else budget
        result = PruneResult(active_before=state.active_count, budget=budget)
        result.active_after = result.active_before
        if budget <= 0 or state.active_count <= budget:
            return result
        kind = self.settings.granularity
        key = {"sentence": "sentence", "line": "line", "turn": "turn"}[kind]
        extra = (current_turn,) if current_turn is not None else ()
        active = state.active_mask()
        protected = self.protected_mask(state, extra)
        if protect is not None:
            protected = protected | protect
        turn_col = state.column("turn")
        if kind == "turn":
            # a whole message goes, template included; protected turns stay whole
            protected_turns = np.unique(turn_col[protected & ~state.column("template")])
            candidates = active & ~np.isin(turn_col, protected_turns) & ~state.column("pinned")
            # a turn with pinned content is protected as a whole
            pinned_turns = np.unique(turn_col[state.column("pinned")])
            candidates &= ~np.isin(turn_col, pinned_turns)
            candidates &= state.column("role") != ROLES.index("system")
        else:
            candidates = active & ~protected
        recent = self._recent(state, candidates, key, int(self.settings.recent_share * budget))
        units = state.column(key)[candidates].astype(np.int64)
        positions = np.flatnonzero(candidates)
        if units.size == 0:
            result.over_budget = True
            return result
        source = state.brightness if scores is None else scores
        ranking_name: RankedBy = "brightness" if scores is None else (ranked_by or "score")
        if len(source) != len(state):
            raise ConversationError(f"{len(source)} scores for a conversation of {len(state)} tokens")
        values = np.asarray(source, np.float64)[positions]
        # group by unit id: units are contiguous in position order, so one sort by unit is stable
        order = np.argsort(units, kind="stable")
        units, positions, values = units[order], positions[order], values[order]
        starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
        sizes = np.diff(np.r_[starts, units.size])
        if self.settings.reduce == "max":
            unit_scores = np.maximum.reduceat(values, starts)
        else:
            unit_scores = np.add.reduceat(values, starts) / sizes
        # dimmest first, older first on ties; the newest share of the budget last, oldest first
        in_window = recent[positions[starts]]
        ranking = np.lexsort((units[starts], np.where(in_window, units[starts], unit_scores), in_window))
        # Removing units one at a time, dimmest first, until within budget is the same as
        # taking the shortest prefix of this ranking that frees enough: a unit's score does
        # not change when another goes. A unit frees its tokens, and the last unit of a
        # message to go also frees that message's template (see `_drop_empty_messages`).
        freed_per_rank = sizes[ranking].astype(np.int64)
        if kind != "turn":
            freed_per_rank += self._template_freed(state, protected, turn_col[positions[starts]], ranking)
        excess = state.active_count - budget
        freed = np.cumsum(freed_per_rank)
        take = int(np.searchsorted(freed, excess)) + 1  # units needed to get within budget
        current_turn_id = len(state.turns) - 1
        for u in ranking[:take]:
            a, b = starts[u], starts[u] + sizes[u]
            unit_positions = positions[a:b]
            result.events.append(self._delete(state, kind, int(units[a]), unit_positions,
                                              float(unit_scores[u]), current_turn_id, ranking_name))
        result.events = _with_templates(result.events, self._drop_empty_messages(state, current_turn_id, protected))
        result.active_after = state.active_count
        result.over_budget = result.active_after > budget
        return result

    def prune_sentence(self, state: ConversationState, sentence: int) -> list[PruneEvent]:
        """Prune one sentence by hand, whatever its brightness (the workbench's "Prune"), and
        its message's template with it when nothing else of the message is left. A sentence that
        is pinned, already pruned, or in a reply still streaming raises `ConversationError`."""
        sentences = state.column("sentence")
        mask = (sentences == sentence) & state.active_mask() & ~state.column("template")
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            raise ConversationError(f"sentence {sentence} has no active text to prune")
        if state.column("pinned")[positions].any():
            raise ConversationError(f"sentence {sentence} is pinned: unpin it first")
        if state.turns and not state.turns[-1].complete and state.turns[-1].start <= positions[0]:
            raise ConversationError(f"sentence {sentence} is in the reply being written")
        protected = self.protected_mask(state)
        values = state.brightness[positions]
        score = float(values.max() if self.settings.reduce == "max" else values.mean())
        turn_now = len(state.turns) - 1
        event = self._delete(state, "sentence", sentence, positions, score, turn_now)
        return _with_templates([event], self._drop_empty_messages(state, turn_now, protected))

    @staticmethod
    def _recent(state: ConversationState, candidates: npt.NDArray[np.bool_], key: str,
                window: int) -> npt.NDArray[np.bool_]:
        """The candidate tokens of every unit that reaches into the newest `window` active tokens
        (the budget's share counts every active token: the protected newest ones take part of it)."""
        recent = np.zeros(len(state), bool)
        if window <= 0:
            return recent
        newest = state.active_positions()[-window:]
        ids = state.column(key)
        reached = np.unique(ids[newest[candidates[newest]]])
        recent[candidates & np.isin(ids, reached)] = True
        return recent

    @staticmethod
    def _template_freed(state: ConversationState, protected: npt.NDArray[np.bool_],
                        unit_turns: npt.NDArray[np.int32], ranking: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """Per rank: the template tokens freed because the unit at that rank empties its message
        (the message's last unit to go: every active content token of a droppable message is a
        candidate, as droppable messages hold no protected content)."""
        extra = np.zeros(ranking.size, np.int64)
        n_turns = len(state.turns)
        if not n_turns or not ranking.size:
            return extra
        per_turn, droppable = _droppable_messages(state, protected)
        rank_of_unit = np.empty(ranking.size, np.int64)
        rank_of_unit[ranking] = np.arange(ranking.size)
        last_rank = np.full(n_turns, -1, np.int64)
        np.maximum.at(last_rank, unit_turns, rank_of_unit)
        turns = np.flatnonzero(droppable & (last_rank >= 0))
        np.add.at(extra, last_rank[turns], per_turn(state.column("template") & state.active_mask())[turns])
        return extra

    def _delete(self, state: ConversationState, kind: Granularity, unit: int,
                positions: npt.NDArray[np.int64], score: float, turn_now: int,
                ranked_by: RankedBy = "brightness") -> PruneEvent:
        state.mark_deleted(positions, turn=turn_now, score=score, reason="pruned", ranked_by=ranked_by)
        return PruneEvent(kind, unit, int(state.column("turn")[positions[0]]),
                          tuple(int(p) for p in positions), score, int(positions.size),
                          _content_text(state, positions), ranked_by=ranked_by)

    @staticmethod
    def _drop_empty_messages(state: ConversationState, turn_now: int,
                             protected: npt.NDArray[np.bool_]) -> dict[int, npt.NDArray[np.int64]]:
        """Take the template of every droppable message whose content is now all gone; returns
        each such turn's template positions."""
        if not state.turns:
            return {}
        per_turn, droppable = _droppable_messages(state, protected)
        template, deleted = state.column("template"), state.column("deleted")
        empty = droppable & (per_turn(~template & ~deleted) == 0)
        dropped = {}
        for t in np.flatnonzero(empty).tolist():
            span = state.turns[t]
            left = np.flatnonzero(~deleted[span.start : span.end] & template[span.start : span.end]) + span.start
            state.mark_deleted(left, turn=turn_now, score=np.nan, reason="empty message")
            dropped[t] = left.astype(np.int64)
        return dropped

    @staticmethod
    def restore(state: ConversationState, event: PruneEvent) -> PruneEvent:
        """Put a pruned unit back, and its message's template with it.

        A message's template is there whenever any of its content is: it comes back with the
        unit whatever took it, the unit's own prune emptying the message ("empty message") or
        a later prune of the whole turn, so the conversation stays valid ChatML after any
        sequence of prunes and restores. An event that does not fit this conversation, or whose
        tokens are not all pruned, raises `ConversationError` and changes nothing."""
        positions = np.asarray(event.positions, np.int64)
        if not 0 <= event.turn < len(state.turns):
            raise ConversationError(f"{event.kind} {event.unit}: this conversation has no turn {event.turn}")
        turn = state.turns[event.turn]
        if positions.ndim != 1 or not ((positions >= turn.start) & (positions < turn.end)).all():
            raise ConversationError(f"{event.kind} {event.unit}: its tokens are not in turn {event.turn}")
        if positions.size == 0 or not state.column("deleted")[positions].all():
            raise ConversationError(f"{event.kind} {event.unit} is not pruned: nothing to restore")
        span = np.arange(turn.start, turn.end)
        template = span[state.column("template")[span] & state.column("deleted")[span]]
        back = np.union1d(positions, template)
        state.undelete(back)
        return PruneEvent(event.kind, event.unit, event.turn, event.positions, event.score,
                          -int(back.size), event.text, restored=True, ranked_by=event.ranked_by)

    def pruned_spans(self, state: ConversationState) -> PrunedSpans:
        """Where every unit now pruned lies, from the audit trail, without building events: what a
        search over a long chat's archive reads before each message."""
        deleted = state.column("deleted") & (state.column("deleted_reason") == REASONS.index("pruned"))
        # a template comes back with its message's content (`restore`): it is a unit of its own
        # only in a message without content
        template, turn = state.column("template"), state.column("turn")
        has_content = np.bincount(turn[~template], minlength=len(state.turns)) > 0
        deleted &= ~(template & has_content[turn])
        positions = np.flatnonzero(deleted)
        unit_ids = state.column(self.settings.granularity)[positions].astype(np.int64)
        starts = unit_starts(unit_ids, positions)
        return PrunedSpans(positions, starts, unit_ids[starts])

    def pruned_event(self, state: ConversationState, spans: PrunedSpans, i: int) -> PruneEvent:
        """The audit event of the `i`th unit of `spans`."""
        ps = spans.unit(i)
        return PruneEvent(self.settings.granularity, int(spans.units[i]), int(state.column("turn")[ps[0]]),
                          tuple(int(p) for p in ps), float(state.column("deleted_score")[ps[0]]), int(ps.size),
                          _content_text(state, ps), ranked_by=RANKINGS[int(state.column("deleted_ranked_by")[ps[0]])])

    def pruned_units(self, state: ConversationState) -> list[PruneEvent]:
        """Every unit now pruned, reconstructed from the audit trail (e.g. after loading)."""
        spans = self.pruned_spans(state)
        return [self.pruned_event(state, spans, i) for i in range(len(spans))]
