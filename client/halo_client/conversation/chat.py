"""`Chat`: a conversation driven against a server, with brightness tracking and pruning.

Order of one turn: the user's message is tokenized once and added; with memory on, it brings
back the pruned sentences it matches best (`memory.Memory`: each one an audit-trail event,
"recalled"); the conversation is pruned to fit (the budget, and the server's context minus the
reply), keeping what was just recalled; the reply streams, each token
joining the state and each frame updating brightness; the reply is closed with the
template's suffix and the conversation is pruned again. If the stream fails, the reply and
its brightness updates are undone: the conversation is exactly as before the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo_client.client import DoneEvent, GenerationStream, KoboldClient, TokenEvent
from halo_client.conversation.memory import Memory, MemorySettings, Recall, prune_keeping
from halo_client.conversation.pruner import Pruner, PruneResult, PrunerSettings
from halo_client.conversation.session import Session, SessionModelMismatch, load, save
from halo_client.conversation.state import ConversationState, FrameColumns, Role
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings
from halo_client.conversation.turns import Part, Tokens, TurnBuilder
from halo_client.errors import HaloError
from halo_client.messages import AttentionLayout, ModelInfo


class ContextBudgetExceeded(HaloError):
    """Even after pruning everything prunable, the request would not fit the server."""


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

    @property
    def text(self) -> str:
        return b"".join(t.piece for t in self.tokens).decode("utf-8", errors="replace")


class Chat:
    def __init__(self, client: KoboldClient, info: ModelInfo, *, state: ConversationState | None = None,
                 tracker: TrackerSettings | None = None, pruner: PrunerSettings | None = None,
                 max_length: int = 200, sampler: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None, attention_layout: AttentionLayout | None = None,
                 memory: MemorySettings | None = None) -> None:
        """`attention_layout`: the frames to ask for; None (the default) asks for the smallest the
        tracker's aggregation can use (`TrackerSettings.smallest_layout`) among those the server
        offers, so long contexts do not pay for full frames; `full` keeps every head (to save them)."""
        self.client = client
        self.info = info
        self.tracker = AttentionTracker(tracker)
        self.pruner = Pruner(pruner)
        self.memory = Memory(memory)
        self.state = state or ConversationState(initial_brightness=self.tracker.settings.initial_brightness)
        self.turns = TurnBuilder(info)
        self.turns.rebuild_history(self.state)
        self.max_length = max_length
        self.sampler = sampler or {}
        self.meta = meta or {}
        self.attention_layout = attention_layout

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
                   force_model: bool = False, **kw: Any) -> Chat:
        """A new chat, or the one saved at `session_path` if that file exists. A session saved
        against another model is refused (`SessionModelMismatch`) unless `force_model`."""
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
                # a resumed chat keeps the tracker and pruner settings it was saved with
                kw.pop("tracker", None)
                kw.pop("pruner", None)
                kw.pop("memory", None)
                return cls(client, info, state=session.state, tracker=session.tracker, pruner=session.pruner,
                           meta=session.meta, memory=session.memory, **kw)
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

    # ------------------------------------------------------------------ pruning

    def prune(self, budget: int | None = None) -> PruneResult:
        return self.pruner.prune(self.state, budget)

    def recall(self) -> list[Recall]:
        """Bring back the pruned sentences the newest user message matches (memory)."""
        last = self.turns.history[-1] if self.turns.history else None
        if last is None or last["role"] != "user":
            return []
        return self.memory.recall(self.state, self.pruner, last["content"])

    def _fit_for_request(self, reserve: int, recalled: list[Recall] | None = None) -> PruneResult:
        hard = self.info.max_context_length - self.max_length - reserve
        soft = self.pruner.settings.max_context_tokens
        budget = min(hard, soft) if soft else hard
        if self.state.active_count <= budget:
            return PruneResult(active_before=self.state.active_count, active_after=self.state.active_count,
                               budget=budget)
        result = prune_keeping(self.pruner, self.state, budget, recalled or [])
        if self.state.active_count > hard:
            raise ContextBudgetExceeded(
                f"the conversation needs {self.state.active_count + reserve} tokens plus a "
                f"{self.max_length}-token reply, over the server's context of "
                f"{self.info.max_context_length}, and only protected content is left.",
                "Shorten the message or the system prompt, or lower the reply's max_length.")
        return result

    # ------------------------------------------------------------------ replies

    async def reply(self, on_token: Callable[[TokenEvent], Awaitable[None] | None] | None = None,
                    stop: asyncio.Event | None = None) -> Reply:
        """Generate the assistant's reply to the conversation so far. Setting `stop` ends it
        early, keeping what was generated (the server finishes with `aborted`); cancelling the
        call or a failed stream instead leaves the conversation exactly as before it."""
        prefix = self.turns.plan_reply()
        prefix_tokens = self.turns.reply_prefix(prefix, await self._tokens(prefix))
        recalled = self.recall()
        before = self._fit_for_request(len(prefix_tokens), recalled)
        brightness_before = self.state.brightness.copy()
        turns_before = len(self.state.turns)
        self.turns.begin_reply(self.state, prefix_tokens)
        request_positions = self.state.active_positions()
        columns = FrameColumns(request_positions, self.max_length)
        input_ids = self.state.input_ids()
        want = self.info.attention.available
        tokens: list[TokenEvent] = []
        positions: list[int] = []
        try:
            async with self.client.generate_stream(input_ids, max_length=self.max_length,
                                                   return_attention=want, attention_layout=self.frame_layout,
                                                   **self.sampler) as stream:
                stopper = asyncio.create_task(self._abort_on(stop, stream)) if stop is not None else None
                try:
                    async for event in stream:
                        if isinstance(event, DoneEvent):
                            done = event
                            break
                        if event.attention is not None:
                            cols = columns.for_frame(event.attention.ctx)
                            self.tracker.update(self.state.brightness, cols, event.attention.values,
                                                event.attention.layout)
                        position = self.state.add_generated(event.token_id, event.piece)
                        columns.add_generated(position)
                        positions.append(position)
                        tokens.append(event)
                        if on_token is not None:
                            maybe = on_token(event)
                            if maybe is not None:
                                await maybe
                    else:
                        raise HaloError("the stream ended without `done`")
                finally:
                    if stopper is not None:
                        stopper.cancel()
        except BaseException:
            # the reply never happened: no tokens, no brightness from it
            if len(self.state.turns) > turns_before:
                self.state.discard_reply()
            self.state.brightness[: len(brightness_before)] = brightness_before
            raise
        suffix = self.turns.plan_reply_suffix()
        self.turns.end_reply(self.state, [t.token_id for t in tokens], suffix, await self._tokens(suffix))
        after = self.pruner.prune(self.state)
        return Reply(tokens, done, before, after, input_ids, positions, request_positions.tolist(), recalled)

    @staticmethod
    async def _abort_on(stop: asyncio.Event, stream: GenerationStream) -> None:
        await stop.wait()
        await stream.abort()

    # ------------------------------------------------------------------ sessions

    def session(self) -> Session:
        return Session(self.state, self.tracker.settings, self.pruner.settings,
                       {**self.meta, "model_name": self.info.model_name}, self.memory.settings)

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
            "budget": self.pruner.settings.max_context_tokens or self.info.max_context_length,
            "brightness_mean": float(brightness.mean()) if brightness.size else 0.0,
            "frames_tracked": self.tracker.frames,
        }
