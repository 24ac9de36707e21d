"""`Chat`: a conversation driven against a server, with brightness tracking and pruning.

One exchange (`send`): the user's message and the template around it, and the template that
opens the reply, are tokenized first, before anything changes. Then, in one go: the message is
added; with memory on, it brings back the pruned sentences it matches best (`memory.Memory`:
each one an audit-trail event, "recalled"); the conversation is pruned to fit (the budget, and
the server's context minus the reply), keeping what was just recalled; when a prune is due,
now or once the reply has joined the chat, and the pruner ranks by the question, a one-token
recall pass first gives the newest message's attention (the last prompt row, frame 0 of a
one-token generation) and the model's retrieval heads rank what stays (`conversation.question`;
brightness where the model's heads are unknown or the pass fails). A message that cannot
fit even with everything prunable gone is refused (`MessageTooLong`) and all of that is undone.
The reply streams, each token joining the state and each frame updating brightness; every
listener gets a `ReplyStep` per token that already holds the token's position, the positions
of its frame's columns and the frame aggregated per column, so nothing downstream maps columns
again. The reply is closed with the template's suffix and the conversation is pruned again,
ranked by the same pass.

What a failure leaves:

- the stream fails before the first token (the server is away or busy), or the call is
  cancelled: everything is undone, the state is exactly as before the message (`send`) or the
  reply (`reply`): the same tokens, flags, brightness and audit trail;
- the stream fails after tokens came (the server died mid-reply, a damaged frame): what was
  written is kept, closed like a reply the user stopped, and the `Reply` says `interrupted`
  and why; nothing is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pydantic

from halo_client.client import DoneEvent, GenerationStream, KoboldClient, TokenEvent
from halo_client.conversation.memory import Memory, MemorySettings, Recall, prune_keeping
from halo_client.conversation.pruner import Pruner, PruneResult, PrunerSettings
from halo_client.conversation.question import head_vote, heads_for
from halo_client.conversation.session import Session, SessionModelMismatch, load, save
from halo_client.conversation.state import ROLES, Checkpoint, ConversationState, FrameColumns, Role
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings
from halo_client.conversation.turns import MessagePlan, Part, Tokens, TurnBuilder
from halo_client.errors import HaloError
from halo_client.messages import AttentionLayout, ModelInfo, Timings

#: `Reply.done.finish_reason` of a reply whose stream failed after it had begun
INTERRUPTED: Final = "interrupted"
#: where a chat's meta (and so its saved session) lists the turns of its interrupted replies
INTERRUPTED_TURNS: Final = "interrupted_turns"
#: the chat's settings a saved session keeps, by section
SAVED_SETTINGS: Final = ("tracker", "pruner", "memory")


class ContextBudgetExceeded(HaloError):
    """Even after pruning everything prunable, the request would not fit the server."""


class MessageTooLong(ContextBudgetExceeded):
    """The user's message cannot fit the server's context beside what must stay (system prompt,
    pinned text, template) and the reply: refused before anything changed."""

    def __init__(self, tokens: int, most: int, context: int, max_length: int) -> None:
        self.tokens = tokens
        self.most = most
        room = (f"at most {most:,}" if most > 0 else "none: the system prompt and pinned text alone fill it")
        super().__init__(
            f"the message has {tokens:,} tokens; beside what must stay (system prompt, pinned text, template) "
            f"and a {max_length:,}-token reply, the server's context of {context:,} has room for {room}; "
            "nothing was sent or changed",
            "Shorten the message (or split it), or lower the reply's max_length.")


@dataclass(frozen=True)
class ReplyStep:
    """One generated token as `Chat.reply`'s listener gets it: already in the state, its frame
    already applied to brightness."""

    event: TokenEvent
    #: the token's position in the state
    position: int
    #: the positions of its frame's columns (None when no frame came), and the frame aggregated
    #: to one value per column as the tracker applied it (`AttentionTracker.aggregate`)
    columns: npt.NDArray[np.int64] | None = None
    attention: npt.NDArray[np.float32] | None = None

    @property
    def index(self) -> int:
        return self.event.index

    @property
    def token_id(self) -> int:
        return self.event.token_id

    @property
    def piece(self) -> bytes:
        return self.event.piece


Listener = Callable[[ReplyStep], Awaitable[None] | None]


@dataclass
class Reply:
    tokens: list[TokenEvent]
    done: DoneEvent
    pruned_before: PruneResult
    pruned_after: PruneResult
    #: exactly what the server got: frame i has len(input_ids) + i columns
    input_ids: list[int] = field(default_factory=list)
    #: the state positions of the generated tokens, and of `input_ids`
    positions: list[int] = field(default_factory=list)
    context_positions: list[int] = field(default_factory=list)
    #: pruned sentences the user's message brought back before the reply
    recalled: list[Recall] = field(default_factory=list)
    #: why the stream broke off after it had begun (the reply keeps what was written), else None
    interrupted: str | None = None
    #: the reply's turn in the state
    turn: int = -1

    @property
    def text(self) -> str:
        return b"".join(t.piece for t in self.tokens).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class SettingChange:
    """A setting of a resumed session that the caller changed (`Chat.open(override=...)`)."""

    section: str
    name: str
    saved: Any
    now: Any


@dataclass(frozen=True)
class BudgetStatus:
    """Where the conversation stands against its budget now."""

    active: int
    #: the pruner's budget, or the server's context when pruning is off
    budget: int
    context: int

    @property
    def over(self) -> bool:
        return self.active > self.budget

    @property
    def message(self) -> str | None:
        if not self.over:
            return None
        return (f"{self.active:,} tokens are active, over the budget of {self.budget:,}: all that is left is "
                "protected (system prompt, the latest exchange, template, pinned); raise the budget, unpin, or "
                "shorten the system prompt")


@dataclass
class _Prepared:
    """What a request needs that takes the server to find out: tokenized before anything changes."""

    prefix: Tokens
    suffix_part: Part
    suffix: Tokens


class Chat:
    def __init__(self, client: KoboldClient, info: ModelInfo, *, state: ConversationState | None = None,
                 tracker: TrackerSettings | None = None, pruner: PrunerSettings | None = None,
                 max_length: int = 200, sampler: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None, attention_layout: AttentionLayout | None = None,
                 memory: MemorySettings | None = None, frames_tracked: int = 0) -> None:
        """`attention_layout`: the frames to ask for; None (the default) asks for the smallest the
        tracker's aggregation can use (`TrackerSettings.smallest_layout`) among those the server
        offers, so long contexts do not pay for full frames; `full` keeps every head (to save them)."""
        self.client = client
        self.info = info
        self.tracker = AttentionTracker(tracker)
        self.tracker.frames = frames_tracked
        self.pruner = Pruner(pruner)
        self.memory = Memory(memory)
        #: the model's retrieval heads, for question-ranked pruning (None: brightness ranks)
        self.question_heads = heads_for(info)
        self.state = state or ConversationState(initial_brightness=self.tracker.settings.initial_brightness)
        self.turns = TurnBuilder(info)
        self.turns.rebuild_history(self.state)
        self.max_length = max_length
        self.sampler = sampler or {}
        self.meta = meta or {}
        self.attention_layout = attention_layout
        #: settings of a resumed session that `open(override=...)` changed
        self.overridden: list[SettingChange] = []

    @property
    def frame_layout(self) -> AttentionLayout:
        """The layout the next reply's frames are asked in."""
        if self.attention_layout is not None:
            return self.attention_layout
        wanted = self.tracker.settings.smallest_layout()
        offered = self.info.attention.layouts
        if wanted in offered:
            return wanted
        return "layer_stats" if wanted == "model_stats" and "layer_stats" in offered else "full"

    @classmethod
    async def open(cls, client: KoboldClient, *, system: str | None = None, session_path: str | None = None,
                   force_model: bool = False, override: Mapping[str, Mapping[str, Any]] | None = None,
                   **kw: Any) -> Chat:
        """A new chat, or the one saved at `session_path` if that file exists. A session saved
        against another model is refused (`SessionModelMismatch`) unless `force_model`, and one
        holding a token id outside the model's vocabulary always (`SessionError`).

        A resumed chat keeps the tracker, pruner and memory settings it was saved with (`tracker`,
        `pruner` and `memory` are for a new chat), except those in `override`
        (`{"pruner": {"max_context_tokens": 150}}`, what the user asked for now): those win, and
        `chat.overridden` lists the saved values they replaced."""
        info = await client.model_info()
        if session_path is not None:
            try:
                session = load(session_path)
            except HaloError:
                if Path(session_path).exists():  # noqa: ASYNC240 - one stat, once per chat
                    raise
            else:
                saved = session.meta.get("model_name")
                if saved is not None and saved != info.model_name and not force_model:
                    raise SessionModelMismatch(
                        f"{session_path} was saved against the model {saved}, and {client.url} runs "
                        f"{info.model_name}: token ids are model-specific, so nothing was loaded.",
                        "Use a server with that model, or load it anyway with force_model=True.")
                session.check_vocabulary(info.vocab_size, info.model_name, session_path)
                for name in SAVED_SETTINGS:
                    kw.pop(name, None)
                settings, changes = _overridden(session, override or {})
                chat = cls(client, info, state=session.state, meta=session.meta,
                           frames_tracked=session.frames_tracked, **settings, **kw)
                chat.overridden = changes
                return chat
        chat = cls(client, info, **kw)
        if system:
            await chat.add_message("system", system)
        return chat

    # ------------------------------------------------------------------ tokens

    async def _tokens(self, part: Part) -> Tokens:
        if not part.text:
            return []
        result = await self.client.tokenize(part.text, add_special_tokens=part.special)
        return [(t.token_id, t.piece) for t in result.tokens]

    async def add_message(self, role: Role, text: str) -> int:
        plan = self.turns.plan_message(role, text)
        return self.turns.add_message(self.state, plan, [await self._tokens(p) for p in plan.parts])

    async def _prepare(self, message: MessagePlan | None = None) -> _Prepared:
        """The reply's opening and closing template, tokenized, for the history as it is or as it
        will be once `message` is added."""
        prefix = self.turns.plan_reply(message)
        suffix = self.turns.plan_reply_suffix(message)
        return _Prepared(self.turns.reply_prefix(prefix, await self._tokens(prefix)), suffix,
                         await self._tokens(suffix))

    # ------------------------------------------------------------------ undo

    def _checkpoint(self) -> tuple[Checkpoint, int, int]:
        return self.state.checkpoint(), len(self.turns.history), self.tracker.frames

    def _rollback(self, checkpoint: tuple[Checkpoint, int, int]) -> None:
        state, history, frames = checkpoint
        self.state.rollback(state)
        del self.turns.history[history:]
        self.tracker.frames = frames

    # ------------------------------------------------------------------ pruning

    def prune(self, budget: int | None = None) -> PruneResult:
        return self.pruner.prune(self.state, budget)

    def recall(self) -> list[Recall]:
        """Bring back the pruned sentences the newest user message matches (memory)."""
        last = self.turns.history[-1] if self.turns.history else None
        if last is None or last["role"] != "user":
            return []
        return self.memory.recall(self.state, self.pruner, last["content"])

    def interrupted_turns(self) -> list[int]:
        """The turns of the replies a failure cut short (kept with what they wrote)."""
        turns = self.meta.get(INTERRUPTED_TURNS, [])
        return [t for t in turns if isinstance(t, int)] if isinstance(turns, list) else []

    def budget_status(self) -> BudgetStatus:
        context = self.info.max_context_length
        return BudgetStatus(self.state.active_count, self.pruner.settings.max_context_tokens or context, context)

    def _hard_limit(self, reserve: int) -> int:
        """The most active tokens a request may have: the server's context minus the reply."""
        return self.info.max_context_length - self.max_length - reserve

    def _budget(self, reserve: int) -> tuple[int, int]:
        """The budget for the next request (the settings', within the server's context less the
        reply and `reserve`), and the server's own bound."""
        hard = self._hard_limit(reserve)
        soft = self.pruner.settings.max_context_tokens
        return (min(hard, soft) if soft else hard), hard

    async def question_scores(self, prefix_tokens: Tokens, suffix_tokens: int = 0) -> npt.NDArray[np.float64] | None:
        """When the next request must prune, or the prune after its reply may (the reply at its
        longest, `max_length`, and the `suffix_tokens` closing it, over the budget), and the pruner
        ranks by the question: the newest message's attention in the model's retrieval heads, one
        score per position (0 for what is not in the request), from a one-token recall pass
        (`max_length=1`, frame 0: the last prompt row, in the full layout). None, and brightness
        ranks, when no prune can fall due, the model's heads are unknown, the server sends no full
        frames, or the pass fails."""
        budget, _hard = self._budget(len(prefix_tokens))
        after = self.pruner.settings.max_context_tokens
        longest = self.state.active_count + len(prefix_tokens) + self.max_length + suffix_tokens
        due = self.state.active_count > budget or 0 < after < longest
        attention = self.info.attention
        if (self.pruner.settings.score != "question" or self.question_heads is None or not attention.available
                or "full" not in attention.layouts or not due):
            return None
        positions = self.state.active_positions()
        frame = None
        try:
            async with self.client.generate_stream(self.state.input_ids() + [t for t, _ in prefix_tokens],
                                                   max_length=1, return_attention=True,
                                                   attention_layout="full") as stream:
                async for event in stream:
                    if isinstance(event, TokenEvent) and event.attention is not None and frame is None:
                        frame = np.asarray(event.attention.values)
        except HaloError:
            return None  # the reply's own request will say what is wrong
        if frame is None or frame.ndim != 3 or frame.shape[2] < len(positions):
            return None
        content = ~self.state.column("template") & (self.state.column("role") != ROLES.index("system"))
        scores = np.zeros(len(self.state), np.float64)
        scores[positions] = head_vote(frame[..., : len(positions)], self.question_heads, content[positions])
        return scores

    def _fit_for_request(self, reserve: int, recalled: list[Recall] | None = None,
                         scores: npt.NDArray[np.float64] | None = None) -> PruneResult:
        budget, hard = self._budget(reserve)
        if self.state.active_count <= budget:
            return PruneResult(active_before=self.state.active_count, active_after=self.state.active_count,
                               budget=budget)
        result = prune_keeping(self.pruner, self.state, budget, recalled or [], scores=scores, ranked_by="question")
        if self.state.active_count > hard:
            raise ContextBudgetExceeded(
                f"the conversation needs {self.state.active_count + reserve} tokens plus a "
                f"{self.max_length}-token reply, over the server's context of "
                f"{self.info.max_context_length}, and only protected content is left.",
                "Shorten the message or the system prompt, or lower the reply's max_length.")
        return result

    # ------------------------------------------------------------------ replies

    async def send(self, text: str, on_token: Listener | None = None, stop: asyncio.Event | None = None, *,
                   on_start: Callable[[], None] | None = None) -> Reply:
        """The user's message and the reply to it, as one exchange (module docstring): refused
        with `MessageTooLong` if it cannot fit, undone entirely if the reply fails before its
        first token (the error is raised), kept with what was written if it fails later.
        `on_start` is called once the request is made up (the message added, what it recalled
        back, the prunes done, the reply opened), before it goes to the server."""
        plan = self.turns.plan_message("user", text)
        parts = [await self._tokens(p) for p in plan.parts]
        prepared = await self._prepare(plan)
        # from here to the request nothing waits but the recall pass (`question_scores`, under the
        # checkpoint): no other task's change lands in the exchange half made
        checkpoint = self._checkpoint()
        try:
            self.turns.add_message(self.state, plan, parts)
        except BaseException:
            self._rollback(checkpoint)
            raise
        content = len(parts[1])
        return await self._reply(prepared, checkpoint, on_token, stop, on_start, message_tokens=content)

    async def reply(self, on_token: Listener | None = None, stop: asyncio.Event | None = None, *,
                    on_start: Callable[[], None] | None = None) -> Reply:
        """Generate the assistant's reply to the conversation so far. Setting `stop` ends it
        early, keeping what was generated (the server finishes with `aborted`); a stream that
        fails before its first token, or cancelling the call, leaves the conversation exactly
        as before it; a stream that fails later keeps what was written (`Reply.interrupted`)."""
        prepared = await self._prepare()
        return await self._reply(prepared, self._checkpoint(), on_token, stop, on_start)

    async def _reply(self, prepared: _Prepared, checkpoint: tuple[Checkpoint, int, int], on_token: Listener | None,
                     stop: asyncio.Event | None, on_start: Callable[[], None] | None,
                     message_tokens: int | None = None) -> Reply:
        try:
            recalled = self.recall()
            scores = await self.question_scores(prepared.prefix, len(prepared.suffix))
            before = self._fit_for_request(len(prepared.prefix), recalled, scores)
            # a match kept in the context is news only when a prune came and left it
            active = self.state.active_mask()
            recalled = [r for r in recalled
                        if not r.kept or (before.events and active[np.asarray(r.event.positions, np.int64)].all())]
        except ContextBudgetExceeded:
            excess = self.state.active_count - self._hard_limit(len(prepared.prefix))
            self._rollback(checkpoint)
            if message_tokens is None:
                raise
            raise MessageTooLong(message_tokens, message_tokens - excess, self.info.max_context_length,
                                 self.max_length) from None
        except BaseException:
            self._rollback(checkpoint)
            raise
        turn = self.turns.begin_reply(self.state, prepared.prefix)
        request_positions = self.state.active_positions()
        columns = FrameColumns(request_positions, self.max_length)
        input_ids = self.state.input_ids()
        tokens: list[TokenEvent] = []
        positions: list[int] = []
        done: DoneEvent | None = None
        interrupted: HaloError | None = None
        started = asyncio.get_running_loop().time()
        try:
            if on_start is not None:
                on_start()
            async with self.client.generate_stream(input_ids, max_length=self.max_length,
                                                   return_attention=self.info.attention.available,
                                                   attention_layout=self.frame_layout, **self.sampler) as stream:
                stopper = asyncio.create_task(self._abort_on(stop, stream)) if stop is not None else None
                try:
                    async for event in stream:
                        if isinstance(event, DoneEvent):
                            done = event
                            break
                        await self._take(event, columns, tokens, positions, on_token)
                    else:
                        raise HaloError("the stream ended without `done`")
                finally:
                    if stopper is not None:
                        stopper.cancel()
        except HaloError as exc:
            if not tokens:  # the reply never began: as if it had never been asked for
                self._rollback(checkpoint)
                raise
            interrupted = exc
        except BaseException:
            self._rollback(checkpoint)
            raise
        if done is None:
            elapsed = asyncio.get_running_loop().time() - started
            done = DoneEvent(INTERRUPTED, len(tokens), len(input_ids),
                             Timings(prompt_ms=0.0, generation_ms=elapsed * 1000.0,
                                     tokens_per_second=len(tokens) / elapsed if elapsed > 0 else 0.0))
        self.turns.end_reply(self.state, [t.token_id for t in tokens], prepared.suffix_part, prepared.suffix)
        if interrupted is not None:
            self.meta[INTERRUPTED_TURNS] = [*self.interrupted_turns(), turn]
        # back within the budget, ranked as before the reply (the reply itself is the newest text)
        after = self.pruner.prune(self.state, scores=None if scores is None else
                                  np.r_[scores, np.zeros(len(self.state) - len(scores))], ranked_by="question")
        self.memory.keep_up(self.state, self.pruner)  # what was archived is embedded before the next message
        reply = Reply(tokens, done, before, after, input_ids, positions, request_positions.tolist(), recalled,
                      str(interrupted) if interrupted is not None else None, turn)
        return reply

    async def _take(self, event: TokenEvent, columns: FrameColumns, tokens: list[TokenEvent], positions: list[int],
                    on_token: Listener | None) -> None:
        """One streamed token: its frame into brightness, the token into the state, the listener."""
        cols = row = None
        if event.attention is not None:
            cols = columns.for_frame(event.attention.ctx)
            row = self.tracker.update(self.state.brightness, cols, event.attention.values, event.attention.layout)
        position = self.state.add_generated(event.token_id, event.piece)
        columns.add_generated(position)
        positions.append(position)
        tokens.append(event)
        if on_token is not None:
            maybe = on_token(ReplyStep(event, position, cols, row))
            if maybe is not None:
                await maybe

    @staticmethod
    async def _abort_on(stop: asyncio.Event, stream: GenerationStream) -> None:
        await stop.wait()
        await stream.abort()

    # ------------------------------------------------------------------ sessions

    def session(self) -> Session:
        return Session(self.state, self.tracker.settings, self.pruner.settings,
                       {**self.meta, "model_name": self.info.model_name}, self.memory.settings, self.tracker.frames)

    def save(self, path: str) -> None:
        save(self.session(), path)

    def stats(self) -> dict[str, Any]:
        state = self.state
        active = state.active_mask()
        brightness = state.brightness[active]
        return {
            "turns": len(state.turns),
            "tokens": len(state),
            "active": state.active_count,
            "pruned": int(np.count_nonzero(~active)),
            "budget": self.budget_status().budget,
            "brightness_mean": float(brightness.mean()) if brightness.size else 0.0,
            "frames_tracked": self.tracker.frames,
        }


def _overridden(session: Session, override: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any],
                                                                                      list[SettingChange]]:
    """The session's settings with `override` applied, and what that changed."""
    saved: dict[str, pydantic.BaseModel] = {"tracker": session.tracker, "pruner": session.pruner,
                                            "memory": session.memory}
    unknown = set(override) - set(saved)
    if unknown:
        raise ValueError(f"no saved settings {sorted(unknown)}; a session keeps {', '.join(SAVED_SETTINGS)}")
    settings: dict[str, Any] = {}
    changes: list[SettingChange] = []
    for section, model in saved.items():
        values = model.model_dump()
        wanted = dict(override.get(section, {}))
        settings[section] = type(model).model_validate({**values, **wanted})
        changes += [SettingChange(section, name, values[name], value) for name, value in wanted.items()
                    if values.get(name) != value]
    return settings, changes
