"""The pruning-quality benchmark: build chats with the model, prune them every way, measure.

1. **Dialog.** Each generated conversation is played against the model in process: user turns
   are added through the model's chat template, the model writes every reply (greedy), and the
   attention of each generated token is kept as one value per context position (mean over
   layers and heads) with the positions its columns map to. Replies and these vectors are
   cached on disk, so reruns and settings searches replay the same frames.
2. **Policies.** Every policy scores the same sentence units from the same frames and the same
   rule (`keep_within_budget`) drops the lowest until the conversation fits 25/50/75 % of its
   tokens. The system prompt and template tokens are always kept; the question comes after.
3. **Measures**, each a gap to the full context, per planted fact's question: the mean NLL of
   the gold answer's tokens (teacher-forced after the reply prompt), the KL divergence of the
   next-token distribution at the answer's first position, and recall (the greedy answer holds
   the gold string).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from halo_client.conversation.state import ConversationState, FrameColumns, Role
from halo_client.conversation.template import ChatTemplate
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings
from halo_client.conversation.turns import Part, Tokens, TurnBuilder
from halo_client.evaluation.conversations import Conversation, Fact
from halo_client.evaluation.policies import (
    AttentionLog,
    Unit,
    gold_scores,
    keep_within_budget,
    random_scores,
    recency_scores,
    streaming_scores,
    unit_scores,
)
from halo_client.serving.backend import ModelBackend

#: the first design's defaults, kept as a policy so the benchmark shows what changing them did
FIRST_DESIGN = TrackerSettings(min_distance=20, decay=0.003)


@dataclass(frozen=True)
class Measure:
    nll: float
    kl: float
    recall: float
    kept_tokens: int


@dataclass
class Dialog:
    """A conversation played against the model, with what the policies need."""

    conversation: Conversation
    state: ConversationState
    #: per generated token: the positions of its frame's columns and the mean attention over them
    frames: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    #: measures already taken, by kept context: settings that keep the same sentences cost nothing
    measures: dict[str, tuple[Measure, list[npt.NDArray[np.float64]]]] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return len(self.state)


class ModelSession:
    """Drives the turn protocol (`TurnBuilder`) in process: tokenization by the backend itself,
    no server, the same template parts and BOS rule as a live chat."""

    def __init__(self, backend: ModelBackend) -> None:
        self.backend = backend
        self.info = backend.model_info()
        self.template = ChatTemplate(self.info.chat_template)
        self.stops = self.info.end_token_ids

    def builder(self) -> TurnBuilder:
        """A turn builder for a new conversation."""
        return TurnBuilder(self.info, self.template)

    def tokens(self, part: Part) -> Tokens:
        ids = self.backend.tokenize(part.text, part.special) if part.text else []
        return [(t, self.backend.token_bytes(t)) for t in ids]

    def add_message(self, state: ConversationState, turns: TurnBuilder, role: Role, text: str) -> None:
        plan = turns.plan_message(role, text)
        turns.add_message(state, plan, [self.tokens(p) for p in plan.parts])


def play(conversation: Conversation, session: ModelSession, *, reply_tokens: int = 40,
         cache_dir: Path | None = None) -> Dialog:
    """Have the model write every reply of `conversation`, keeping each token's attention."""
    cached = _load_cached(conversation, session, reply_tokens, cache_dir)
    state = ConversationState()
    turns = session.builder()
    dialog = Dialog(conversation, state)
    replies: list[list[int]] = []
    session.add_message(state, turns, "system", conversation.system)
    backend = session.backend
    for reply_index, turn in enumerate(conversation.turns):
        session.add_message(state, turns, "user", turn.text)
        prefix = turns.plan_reply()
        turns.begin_reply(state, turns.reply_prefix(prefix, session.tokens(prefix)))
        columns = FrameColumns(state.active_positions(), reply_tokens)
        result = backend.prefill(state.input_ids(), True)
        script = cached[reply_index] if cached is not None else None
        generated: list[int] = []
        for i in range(reply_tokens):
            assert result.attention is not None
            cols = columns.for_frame(result.attention.shape[2])
            dialog.frames.append((cols.copy(), result.attention.mean(axis=(0, 1), dtype=np.float32)))
            token = script[i] if script is not None else int(np.argmax(result.logits))
            position = state.add_generated(token, backend.token_bytes(token))
            columns.add_generated(position)
            generated.append(token)
            if token in session.stops or i + 1 == reply_tokens or (script is not None and i + 1 == len(script)):
                break
            result = backend.decode(token, True)
        suffix = turns.plan_reply_suffix()
        turns.end_reply(state, generated, suffix, session.tokens(suffix))
        replies.append(generated)
    if cached is None and cache_dir is not None:
        _save_cached(conversation, session, reply_tokens, cache_dir, replies)
    dialog.units = _units(dialog)
    return dialog


def _cache_path(conversation: Conversation, session: ModelSession, reply_tokens: int, cache_dir: Path) -> Path:
    key = json.dumps([conversation.seed, conversation.system, [t.text for t in conversation.turns],
                      session.info.model_name, session.info.vocab_size, reply_tokens])
    return cache_dir / f"dialog-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _load_cached(conversation: Conversation, session: ModelSession, reply_tokens: int,
                 cache_dir: Path | None) -> list[list[int]] | None:
    if cache_dir is None:
        return None
    path = _cache_path(conversation, session, reply_tokens, cache_dir)
    try:
        replies = json.loads(path.read_text())["replies"]
    except (OSError, ValueError, KeyError):
        return None
    return replies if len(replies) == len(conversation.turns) else None


def _save_cached(conversation: Conversation, session: ModelSession, reply_tokens: int, cache_dir: Path,
                 replies: list[list[int]]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(conversation, session, reply_tokens, cache_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"replies": replies}))
    tmp.replace(path)


def _units(dialog: Dialog) -> list[Unit]:
    """Sentence units of every non-system message's content, in position order."""
    state = dialog.state
    sentence = state.column("sentence")
    content = ~state.column("template") & (state.column("role") != 0)
    positions = np.flatnonzero(content)
    if positions.size == 0:
        return []
    ids = sentence[positions]
    breaks = np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | (np.diff(positions) != 1)])
    ends = np.r_[breaks[1:], positions.size]
    fact_text = [f.statement for f in dialog.conversation.facts]
    units = []
    for a, b in zip(breaks.tolist(), ends.tolist(), strict=True):
        start, end = int(positions[a]), int(positions[b - 1]) + 1
        text = state.text(range(start, end)).strip()
        holds = any(text and (text in s or s in text) for s in fact_text)
        units.append(Unit(start, end, protected=False, holds_fact=holds))
    return units


# ---------------------------------------------------------------------------- policies

Scorer = Callable[[Dialog], npt.NDArray[np.float64]]


def brightness_scorer(settings: TrackerSettings) -> Scorer:
    """Brightness replayed from the dialog's frames (aggregation is the mean).

    As in a live chat, a token starts bright when it first appears in a frame: at the mean
    brightness of the tokens already there, and at least `initial_brightness`."""

    def score(dialog: Dialog) -> npt.NDArray[np.float64]:
        tracker = AttentionTracker(settings.model_copy(update={"aggregation": "mean"}))
        brightness = np.zeros(dialog.tokens, np.float32)
        seen = np.zeros(dialog.tokens, bool)
        for positions, mean in dialog.frames:
            fresh = ~seen[positions]
            if fresh.any():
                old = positions[~fresh]
                start = max(settings.initial_brightness, float(brightness[old].mean()) if old.size else 0.0)
                brightness[positions[fresh]] = start
                seen[positions[fresh]] = True
            tracker.update(brightness, positions, mean[None, None, :])
        return unit_scores(dialog.units, brightness.astype(np.float64), "max")

    return score


def _log(dialog: Dialog) -> AttentionLog:
    log = AttentionLog(dialog.tokens)
    for positions, mean in dialog.frames:
        log.add(positions, mean[None, None, :])
    return log


def h2o_scorer(dialog: Dialog) -> npt.NDArray[np.float64]:
    return unit_scores(dialog.units, _log(dialog).accumulated, "max")


def tova_scorer(dialog: Dialog) -> npt.NDArray[np.float64]:
    return unit_scores(dialog.units, _log(dialog).last, "max")


def _random_scorer(seed: int) -> Scorer:
    return lambda d: random_scores(d.units, seed)


def policies(tuned: TrackerSettings | None = None, random_seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Scorer]:
    out: dict[str, Scorer] = {"brightness": brightness_scorer(TrackerSettings())}
    if TrackerSettings() != FIRST_DESIGN:
        out["brightness (first design)"] = brightness_scorer(FIRST_DESIGN)
    if tuned is not None:
        out["brightness (tuned)"] = brightness_scorer(tuned)
    out.update({
        "recency": lambda d: recency_scores(d.units),
        "streaming": lambda d: streaming_scores(d.units),
        "h2o": h2o_scorer,
        "tova": tova_scorer,
    })
    for seed in random_seeds:
        out[f"random#{seed}"] = _random_scorer(seed)
    out["gold"] = lambda d: gold_scores(d.units)
    return out


# ---------------------------------------------------------------------------- measures


def _log_softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x -= x.max()
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum())
    return out


class Judge:
    """Runs the measures for one dialog: the questions after a given kept context."""

    def __init__(self, dialog: Dialog, session: ModelSession, answer_tokens: int = 12) -> None:
        self.dialog = dialog
        self.session = session
        self.answer_tokens = answer_tokens
        state = dialog.state
        self.template_mask = state.column("template").copy()
        self.system_mask = state.column("role") == 0
        system = {"role": "system", "content": dialog.conversation.system}
        self.questions: list[tuple[Fact, list[int], list[int]]] = []
        for fact in dialog.conversation.facts:
            # each question follows the whole (pruned) chat, so it is a message of a later turn
            turns = session.builder()
            turns.history = [system]
            plan = turns.plan_message("user", fact.question)
            question = [t for part in turns.message_tokens(plan, [session.tokens(p) for p in plan.parts], first=False)
                        for t in part]
            turns.history.append({"role": "user", "content": fact.question})
            opener = turns.plan_reply()
            prompt = turns.reply_prefix(opener, session.tokens(opener)) + session.tokens(Part(fact.lead, False))
            answer = session.tokens(Part(f" {fact.answer}" if fact.lead else fact.answer, False))
            self.questions.append((fact, [t for t, _ in question + prompt], [t for t, _ in answer]))

    def context_ids(self, keep: npt.NDArray[np.bool_] | None) -> list[int]:
        state = self.dialog.state
        mask = self.template_mask | self.system_mask
        if keep is None:
            mask = np.ones(len(state), bool)
        else:
            for unit, kept in zip(self.dialog.units, keep.tolist(), strict=True):
                if kept:
                    mask[unit.start : unit.end] = True
            # content outside any unit (none expected) is kept
        ids: list[int] = np.asarray(state.column("token_id"))[mask].tolist()
        return ids

    def measure(self, context: list[int], reference: list[npt.NDArray[np.float64]] | None) -> tuple[
            Measure, list[npt.NDArray[np.float64]]]:
        key = hashlib.sha256(np.asarray(context, np.int64).tobytes()).hexdigest() + str(reference is None)
        cached = self.dialog.measures.get(key)
        if cached is None:
            cached = self.dialog.measures[key] = self._measure(context, reference)
        return cached

    def _measure(self, context: list[int], reference: list[npt.NDArray[np.float64]] | None) -> tuple[
            Measure, list[npt.NDArray[np.float64]]]:
        backend = self.session.backend
        nlls, kls, hits, first_logprobs = [], [], [], []
        for q, (fact, question, answer) in enumerate(self.questions):
            result = backend.prefill(context + question, False)
            first = _log_softmax(result.logits)
            first_logprobs.append(first)
            if reference is not None:
                p = np.exp(reference[q])
                kls.append(float(np.sum(p * (reference[q] - first))))
            total, logprobs = 0.0, first
            for token in answer:
                total -= float(logprobs[token])
                logprobs = _log_softmax(backend.decode(token, False).logits)
            nlls.append(total / max(len(answer), 1))
            # the greedy answer, from the first distribution already computed
            out, token = b"", int(np.argmax(first))
            if token not in self.session.stops:
                out += backend.token_bytes(token)
                result = backend.prefill([*context, *question, token], False)  # rewinds the answer
                for _ in range(self.answer_tokens - 1):
                    token = int(np.argmax(result.logits))
                    if token in self.session.stops:
                        break
                    out += backend.token_bytes(token)
                    result = backend.decode(token, False)
            hits.append(fact.answer.lower() in out.decode("utf-8", "replace").lower())
        measure = Measure(float(np.mean(nlls)), float(np.mean(kls)) if kls else 0.0, float(np.mean(hits)),
                          len(context))
        return measure, first_logprobs


def evaluate(dialog: Dialog, session: ModelSession, scorers: dict[str, Scorer],
             budgets: Sequence[float] = (0.25, 0.5, 0.75)) -> list[dict[str, Any]]:
    """Rows of (policy, budget, gaps to the full context) for one dialog."""
    judge = Judge(dialog, session)
    full_context = judge.context_ids(None)
    full, reference = judge.measure(full_context, None)
    total = len(full_context)
    fixed = int((judge.template_mask | judge.system_mask).sum())
    rows = []
    for fraction in budgets:
        budget = max(int(total * fraction) - fixed, 0)
        for name, scorer in scorers.items():
            keep = keep_within_budget(dialog.units, scorer(dialog), budget)
            measure, _ = judge.measure(judge.context_ids(keep), reference)
            rows.append({
                "conversation": dialog.conversation.seed, "split": dialog.conversation.split,
                "policy": name, "budget": fraction, "kept_tokens": measure.kept_tokens, "full_tokens": total,
                "nll_gap": measure.nll - full.nll, "kl": measure.kl, "recall": measure.recall,
                "recall_gap": measure.recall - full.recall, "full_recall": full.recall,
            })
    return rows
