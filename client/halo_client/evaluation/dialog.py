"""Playing a conversation against the model: the full-context run every policy is measured against.

The model writes every reply the conversation leaves to it (greedy), in process, through the
same turn protocol as a live chat. What the policies and measures need is kept:

- **frames**: for every token of a history reply, the attention of the position that predicted
  it (the frame a server streams for that token), its mean over layers and heads per column,
  with the positions its columns map to;
- **surprisal** of every token given everything before it (self-information, for the
  Selective-Context-style policy);
- for every tail step: the full-context log-probabilities of each token of its reply (the
  reference for KL, NLL and top-1 agreement), for a question the answer's place in the reply and
  whether the full-context model gets it right, and the attention of the step's message over the
  context before it (for the question-aware policy).

A tail question's reply is scripted, lead-in and gold answer ("Your locker code is 4821."), so
every policy sees the same tail text and later questions do not inherit an earlier wrong answer;
a fidelity probe's reply is the full-context model's own. Replies are cached on disk by the
conversation's content, so a rerun replays them in one pass per reply instead of decoding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from halo_client.conversation.state import ConversationState, Role
from halo_client.conversation.turns import Part, Tokens, TurnBuilder
from halo_client.evaluation.conversations import Conversation, Step
from halo_client.evaluation.model import F32, InProcessModel, log_softmax

#: greedy tokens in which a correct answer must appear
ANSWER_TOKENS = 8


@dataclass(frozen=True)
class Frame:
    """One generated token's attention, its mean over layers and heads: `values[j]` for the column
    at `positions[j]`."""

    positions: npt.NDArray[np.int64]
    values: F32


@dataclass(frozen=True)
class TurnTokens:
    role: Role
    prefix: Tokens
    content: Tokens
    suffix: Tokens
    #: a reply that ended with the model's own end token (the last of `content`)
    stopped: bool = False

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.content) + len(self.suffix)


#: which rows of a message's pass a per-head question score reads: all of the message's own rows
#: (its content, its template's end and the reply's header) or the last alone (the header's last
#: token: what predicts the reply's first token, the frame a one-token generation streams first)
Rows = Literal["message", "last"]
ROWS: tuple[Rows, ...] = ("message", "last")


@dataclass(frozen=True)
class Asked:
    """The attention a message pays the context it arrives in (the positions of its columns)."""

    positions: npt.NDArray[np.int64]
    #: the mean over layers and heads, summed over the message's content rows (QUITO-style)
    summed: npt.NDArray[np.float32]
    #: per `Rows`: `[layers, heads, columns]`, kept per head so scores can pick heads
    heads: dict[Rows, npt.NDArray[np.float32]]


def asked_of(attention: F32, positions: npt.NDArray[np.int64], content: slice) -> Asked:
    """From a pass's attention rows `[layers, heads, rows, ctx]` whose last rows are a message's
    (`content`: its content rows; every row from its start to the last is the message's), the
    attention it pays the columns at `positions`."""
    n = len(positions)
    rows = attention[..., :n]
    return Asked(positions, rows[:, :, content].mean(axis=(0, 1)).sum(axis=0).astype(np.float32),
                 {"message": rows[:, :, content.start :].mean(axis=2, dtype=np.float32),
                  "last": np.ascontiguousarray(rows[:, :, -1])})


@dataclass
class TailStep:
    step: Step
    user: TurnTokens
    reply: TurnTokens
    #: `[len(reply.content), vocab]` full-context log-probabilities predicting each reply token
    reference: npt.NDArray[np.float32]
    #: the attention of the message over the context before it, full context
    asked: Asked
    #: a question's gold answer: indices into `reply.content`
    answer: tuple[int, int] = (0, 0)
    full_correct: bool = False
    full_answer: str = ""


@dataclass
class Dialog:
    conversation: Conversation
    history: list[TurnTokens]
    frames: list[Frame]
    surprisal: npt.NDArray[np.float64]
    tail: list[TailStep] = field(default_factory=list)

    def history_state(self) -> ConversationState:
        """A fresh state holding the history (positions as in the played conversation)."""
        state = ConversationState()
        for turn in self.history:
            add_turn(state, turn)
        return state

    @property
    def history_tokens(self) -> int:
        return sum(t.size for t in self.history)


def add_turn(state: ConversationState, turn: TurnTokens) -> None:
    if turn.role == "assistant":
        state.begin_reply(turn.prefix)
        for token in turn.content:
            state.add_generated(*token)
        state.end_reply(turn.suffix, stop_is_template=turn.stopped)
    else:
        state.add_message(turn.role, turn.content, turn.prefix, turn.suffix)


def frames_of(attention: F32, positions: npt.NDArray[np.int64]) -> list[Frame]:
    """The frames of `rows` consecutive generated tokens from a rows pass: row r's columns are
    `positions[: len(positions) - rows + 1 + r]`."""
    rows = attention.shape[2]
    mean = attention[..., : len(positions)].mean(axis=(0, 1), dtype=np.float32)
    first = len(positions) - rows + 1
    return [Frame(positions[: first + r], mean[r, : first + r]) for r in range(rows)]


class _Player:
    """One conversation's play: the state, the turn protocol, the running surprisal."""

    def __init__(self, model: InProcessModel, conversation: Conversation) -> None:
        self.model = model
        self.turns: TurnBuilder = model.builder()
        self.state = ConversationState()
        self.surprisal: list[float] = []
        self.frames: list[Frame] = []
        self.history: list[TurnTokens] = []
        self.conversation = conversation

    def message(self, role: Role, text: str) -> TurnTokens:
        plan = self.turns.plan_message(role, text)
        prefix, content, suffix = self.turns.message_tokens(plan, [self.model.tokens(p) for p in plan.parts],
                                                            first=not self.state.turns)
        turn = TurnTokens(role, prefix, content, suffix)
        add_turn(self.state, turn)
        self.turns.history.append({"role": role, "content": text})
        return turn

    def reply(self, message: TurnTokens, limit: int, *, script: list[int] | None, keep_frames: bool,
              question: Step | None) -> TailStep:
        """Open the reply to `message` (just added), run the model over the message and the
        reply (`script`, teacher-forced, or greedy up to `limit` tokens), close it."""
        model, state = self.model, self.state
        prefix_part = self.turns.plan_reply()
        prefix = self.turns.reply_prefix(prefix_part, model.tokens(prefix_part))
        start = len(state) - message.size
        state.begin_reply(prefix)
        ids = state.input_ids()
        # the one column map a live chat uses too: the request's positions, then each generated
        # token's (they join the state after the loop, from position len(state) on)
        columns = state.frame_columns(len(script) if script is not None else limit)
        answer, greedy, correct = (0, 0), "", False
        if question is not None and question.fact is not None:
            fact = question.fact
            lead = model.tokens(Part(fact.lead, False)) if fact.lead else []
            gold = model.tokens(Part(f" {fact.answer}" if fact.lead else fact.answer, False))
            script = [t for t, _ in lead + gold + model.tokens(Part(".", False))] + [min(model.stops)]
            answer = (len(lead), len(lead) + len(gold))
            greedy = self._greedy_answer(ids + [t for t, _ in lead])
            correct = fact.answer.lower() in greedy.lower()
        # row i is position start - 1 + i: rows [0, new) predict the message and the reply's
        # prefix, the rows after them the reply
        new = len(ids) - start
        if script is not None:
            logits, attention = model.rows(ids + script[:-1], new + len(script), True)
        else:
            logits, attention = model.rows(ids, new + 1, True)
        assert attention is not None
        logprobs = log_softmax(logits)
        self.surprisal.extend((-logprobs[np.arange(new), np.asarray(ids[start:])]).tolist())
        content_rows = slice(1 + len(message.prefix), 1 + len(message.prefix) + len(message.content))
        # the message's rows run to row `new`, the header's last token (it predicts the reply)
        asked = asked_of(attention[:, :, : new + 1], np.arange(len(ids), dtype=np.int64), content_rows)
        if script is not None:
            tokens = list(script)
            reference = logprobs[new:]
            if keep_frames:
                for r in range(len(script) - 1):
                    columns.add_generated(len(state) + r)
                self.frames.extend(frames_of(attention[:, :, new:], columns.for_frame(len(ids) + len(script) - 1)))
        else:
            tokens, rows = [], []
            row_logits, row_attention = logits[-1], attention[:, :, -1:, : len(ids)]
            for r in range(limit):
                if keep_frames:
                    self.frames.extend(frames_of(row_attention, columns.for_frame(len(ids) + r)))
                token = int(np.argmax(row_logits))
                columns.add_generated(len(state) + r)
                tokens.append(token)
                rows.append(log_softmax(row_logits))
                if token in model.stops or r + 1 == limit:
                    break
                row_logits, frame = model.decode(token, keep_frames)
                if frame is not None:
                    row_attention = frame[:, :, None, :]
            reference = np.stack(rows)
        content_start = len(state)
        for token, lp in zip(tokens, reference, strict=True):
            self.surprisal.append(float(-lp[token]))
            state.add_generated(token, model.piece(token))
        suffix_part = self.turns.plan_reply_suffix()
        self.turns.end_reply(state, tokens, suffix_part, model.tokens(suffix_part))
        end = state.turns[-1].end
        suffix = [(int(state.column("token_id")[p]), state.pieces[p]) for p in range(content_start + len(tokens), end)]
        self.surprisal.extend([0.0] * len(suffix))
        stopped = bool(tokens) and tokens[-1] in model.stops
        reply = TurnTokens("assistant", prefix, [(t, model.piece(t)) for t in tokens], suffix, stopped)
        step = question or Step("fidelity", "")
        return TailStep(step, message, reply, reference.astype(np.float32), asked, answer, correct, greedy)

    def _greedy_answer(self, ids: list[int]) -> str:
        """The full-context model's own answer after the lead-in (greedy, a few tokens)."""
        logits, _ = self.model.rows(ids, 1, False)
        row = logits[0]
        out = b""
        for _ in range(ANSWER_TOKENS):
            token = int(np.argmax(row))
            if token in self.model.stops:
                break
            out += self.model.piece(token)
            if b"\n" in out:
                break
            row, _frame = self.model.decode(token, False)
        return out.decode("utf-8", "replace")


def _cache_path(conversation: Conversation, model: InProcessModel, reply_tokens: int, probe_tokens: int,
                cache_dir: Path) -> Path:
    key = json.dumps([conversation.system, [[m.role, m.content] for m in conversation.messages],
                      [[s.kind, s.text] for s in conversation.tail], model.info.model_name, model.info.vocab_size,
                      reply_tokens, probe_tokens])
    return cache_dir / f"dialog-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def play(conversation: Conversation, model: InProcessModel, *, reply_tokens: int = 32, probe_tokens: int = 64,
         cache_dir: Path | None = None) -> Dialog:
    """Play `conversation`: the model writes each reply left to it (at most `reply_tokens`, and
    `probe_tokens` for a fidelity probe's reply)."""
    path = _cache_path(conversation, model, reply_tokens, probe_tokens, cache_dir) if cache_dir else None
    cached: list[list[int]] | None = None
    if path is not None:
        try:
            cached = json.loads(path.read_text())["replies"]
        except (OSError, ValueError, KeyError, TypeError):
            cached = None
    scripts = iter(cached) if cached is not None else None
    written: list[list[int]] = []
    player = _Player(model, conversation)
    system = player.message("system", conversation.system)
    player.history.append(system)
    player.surprisal.extend([0.0] * system.size)
    last_user: TurnTokens | None = None
    for message in conversation.messages:
        if message.role == "user":
            last_user = player.message("user", message.content or "")
            player.history.append(last_user)
            continue
        assert last_user is not None  # conversations alternate, a user message first
        if message.content is not None:  # a reply given by the conversation: teacher-forced
            script: list[int] | None = [t for t, _ in model.tokens(Part(message.content, False))] + [min(model.stops)]
        else:
            script = next(scripts, None) if scripts is not None else None
        played = player.reply(last_user, reply_tokens, script=script, keep_frames=True, question=None)
        if message.content is None:
            written.append([t for t, _ in played.reply.content])
        player.history.append(played.reply)
    tail: list[TailStep] = []
    for step in conversation.tail:
        user = player.message("user", step.text)
        if step.kind == "question":
            played = player.reply(user, probe_tokens, script=None, keep_frames=False, question=step)
        else:
            script = next(scripts, None) if scripts is not None else None
            played = player.reply(user, probe_tokens, script=script, keep_frames=False, question=None)
            played.step = step
            written.append([t for t, _ in played.reply.content])
        tail.append(played)
    if path is not None and cached is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"replies": written}))
        tmp.replace(path)
    surprisal = np.asarray(player.surprisal, np.float64)
    assert len(surprisal) == len(player.state)
    return Dialog(conversation, player.history, player.frames, surprisal, tail)
