"""Pruning policies compared by the benchmark: each says how much every token matters.

Every policy sees the same conversation, the same attention frames (from the played
conversation, then from the pruned context as the tail goes on) and the same pruner
(`conversation.pruner.Pruner`, sentence units, the same protection rules): a policy only gives
every position a score, the pruner turns scores into sentence scores (their max, or mean) and
drops the lowest until the conversation fits. So policies differ only in what they believe
matters.

A policy is incremental, like the chat's tracker: `start` with the history's frames, `observe`
each later reply's frames, `scores` before each prune.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from halo_client.conversation.pruner import Reduce
from halo_client.conversation.question import head_vote
from halo_client.conversation.state import ConversationState
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings
from halo_client.evaluation.conversations import Fact
from halo_client.evaluation.dialog import Asked, Dialog, Frame, Rows

FloatArray = npt.NDArray[np.float64]
#: far above any score: what a policy keeps first
KEEP_FIRST = 1e9


@dataclass(frozen=True)
class StepView:
    """What a policy may look at before a prune: the newest user message and the budget."""

    message: str
    budget: int
    #: the attention of the message over the context before it (None: not measured)
    asked: Asked | None = None


class Policy(ABC):
    name = "policy"
    #: how a sentence's token scores make its score
    reduce: Reduce = "max"
    #: reads `StepView.asked` after the first message (it costs the replay a few more tokens per
    #: step, so only policies that read it get it)
    uses_question_attention = False
    #: the pruner's recent window (`PrunerSettings.recent_share`) this policy prunes with
    recent_share = 0.0

    def start(self, dialog: Dialog) -> None:  # noqa: B027 (a hook: most policies need none)
        """Before the tail: the played history."""

    def observe(self, frames: Sequence[Frame]) -> None:  # noqa: B027 (a hook: most policies need none)
        """A reply's frames, in the context the policy pruned."""

    @abstractmethod
    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        """One score per position of `state` (deleted ones included; they are ignored)."""


class Brightness(Policy):
    """The chat's tracker replayed: accumulated, distance-weighted (optionally decayed)
    attention, from the frames' mean over layers and heads; `per_frame` divides
    the accumulation by the frames a token has been in, so old tokens are not favoured just for
    having been there longer."""

    def __init__(self, name: str, settings: TrackerSettings | None = None, per_frame: bool = False,
                 recent_share: float = 0.0) -> None:
        self.name = name
        self.recent_share = recent_share
        self.settings = (settings or TrackerSettings()).model_copy(update={"aggregation": "mean"})
        self.per_frame = per_frame

    def start(self, dialog: Dialog) -> None:
        self.tracker = AttentionTracker(self.settings)
        capacity = len(dialog.surprisal)
        self.brightness = np.zeros(capacity, np.float32)
        self.seen = np.zeros(capacity, bool)
        self.frames_in = np.zeros(capacity, np.float32)
        self.observe(dialog.frames)

    def observe(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            positions = frame.positions
            fresh = ~self.seen[positions]
            if fresh.any():
                # as in a live chat, a token starts at the mean brightness of those already there
                old = positions[~fresh]
                start = 0.0 if self.per_frame else max(self.settings.initial_brightness,
                                                         float(self.brightness[old].mean()) if old.size else 0.0)
                self.brightness[positions[fresh]] = start
                self.seen[positions[fresh]] = True
            self.tracker.update(self.brightness, positions, frame.values[None, None, :])
            self.frames_in[positions] += 1

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        n = len(state)
        scores = self.brightness[:n].astype(np.float64)
        if self.per_frame:
            counted = self.frames_in[:n] > 0
            scores[counted] /= self.frames_in[:n][counted]
            # a token no frame has seen yet starts level with the others, as brightness does
            scores[~counted] = scores[counted].mean() if counted.any() else 0.0
        return scores


class HeavyHitters(Policy):
    """H2O's score: the plain sum of the attention each token received (no decay, no distance
    weighting)."""

    name = "h2o"

    def start(self, dialog: Dialog) -> None:
        self.accumulated: FloatArray = np.zeros(len(dialog.surprisal), np.float64)
        self.observe(dialog.frames)

    def observe(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            self.accumulated[frame.positions] += frame.values

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        out: FloatArray = self.accumulated[: len(state)].copy()
        return out


class LastQuery(Policy):
    """TOVA's score: the attention of the newest generated token."""

    name = "tova"

    def start(self, dialog: Dialog) -> None:
        self.last: FloatArray = np.zeros(len(dialog.surprisal), np.float64)
        self.observe(dialog.frames[-1:])

    def observe(self, frames: Sequence[Frame]) -> None:
        if frames:
            self.last[:] = 0.0
            self.last[frames[-1].positions] = frames[-1].values

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        out: FloatArray = self.last[: len(state)].copy()
        return out


def _content(state: ConversationState) -> npt.NDArray[np.bool_]:
    """Prunable content: not template, not the system prompt."""
    mask: npt.NDArray[np.bool_] = ~state.column("template") & (state.column("role") != 0)
    return mask


class Recency(Policy):
    name = "recency"

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        return np.arange(len(state), dtype=np.float64)


class Streaming(Policy):
    """StreamingLLM at sentence level: the first `sinks` sentences outrank everything, then the newest."""

    name = "streaming"

    def __init__(self, sinks: int = 4) -> None:
        self.sinks = sinks

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        scores = np.arange(len(state), dtype=np.float64)
        content = _content(state)
        sentence = state.column("sentence")
        first = np.unique(sentence[content])[: self.sinks]
        scores[content & np.isin(sentence, first)] += KEEP_FIRST
        return scores


class RandomOrder(Policy):
    """Sentences in a random order (the same sentence gets the same draw at every prune)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.name = f"random#{seed}"

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        sentence = state.column("sentence").astype(np.int64)
        draws = np.random.default_rng(self.seed).random(int(sentence.max(initial=0)) + 2)
        return draws[sentence]


def holds(text: str, fact: Fact) -> bool:
    """Whether a sentence holds `fact`: its statement; for a user's own conversation, a sentence
    of the question's evidence, or without evidence one holding its gold answer."""
    text = " ".join(text.split())
    if not text:
        return False
    if fact.evidence:
        return any(text in passage or passage in text for passage in fact.evidence)
    if fact.answer.lower() not in text.lower():
        return False
    return not fact.statement or text in fact.statement or fact.statement in text


def holds_fact(text: str, dialog: Dialog) -> bool:
    """Whether a sentence holds any of the conversation's facts."""
    return any(holds(text, fact) for fact in dialog.conversation.facts)


class Gold(Policy):
    """The upper bound for recall: sentences holding planted facts first, then the newest."""

    name = "gold"

    def start(self, dialog: Dialog) -> None:
        self.dialog = dialog

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        scores = np.arange(len(state), dtype=np.float64)
        content = _content(state)
        sentence = state.column("sentence")
        for sid in np.unique(sentence[content]).tolist():
            mask = content & (sentence == sid)
            if holds_fact(state.text(np.flatnonzero(mask)), self.dialog):
                scores[mask] += KEEP_FIRST
        return scores


class SelfInformation(Policy):
    """Selective Context: a sentence's mean surprisal under the same model (in the full context
    when it was written); predictable text goes first."""

    name = "self-information"
    reduce: Reduce = "mean"

    def start(self, dialog: Dialog) -> None:
        self.surprisal: FloatArray = dialog.surprisal

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        out: FloatArray = self.surprisal[: len(state)].copy()
        return out


class QuestionAttention(Policy):
    """QUITO-style: the attention the newest user message's tokens give each token."""

    name = "question-attention"
    uses_question_attention = True

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        scores = np.zeros(len(state), np.float64)
        if view.asked is not None:
            keep = view.asked.positions < len(state)
            scores[view.asked.positions[keep]] = view.asked.summed[keep]
        return scores


class QuestionHeads(Policy):
    """The newest message's attention in chosen heads (retrieval heads, SnapKV's observation
    window): each head's row over the context divided by its own maximum over content, summed
    over the heads; from the message's rows or the last row alone (`Rows`)."""

    uses_question_attention = True

    def __init__(self, name: str, heads: Sequence[tuple[int, int]], rows: Rows = "message",
                 recent_share: float = 0.0) -> None:
        self.name, self.heads, self.rows, self.recent_share = name, tuple(heads), rows, recent_share

    def scores(self, state: ConversationState, view: StepView) -> FloatArray:
        scores = np.zeros(len(state), np.float64)
        if view.asked is None or not self.heads:
            return scores
        keep = view.asked.positions < len(state)
        positions = view.asked.positions[keep]
        scores[positions] = head_vote(view.asked.heads[self.rows][..., keep], self.heads, _content(state)[positions])
        return scores
