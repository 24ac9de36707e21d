"""`Workbench`: the conversation behind the web page, without any HTTP.

It owns one `Chat` (the same code the command line chats with: state, tracker, pruner,
sessions) against the model server at `--url`, and turns what happens to it into messages for
the pages watching it (`subscribe`): JSON objects for structure (tokens, turns, prunes,
settings, connection) and, per generated token, one binary `levels` update (protocol.py).
The page only ever draws and asks; every decision is made here.

How the page stays in step: every change to the conversation's structure goes through `_sync`,
which compares the columns the page was last sent (deleted, pinned, sentence, template) with
the state's and sends the rows that differ, plus the tokens it has not drawn yet. A change of
the set of active positions bumps `epoch`; a levels update carries the epoch and count it was
computed for, so a page that missed something notices and asks for a `resync`.

Commands that change the conversation are refused while a reply streams (except Stop and view
settings): the page's controls say so, and the state is never edited under a running tracker.
If a reply fails (the server went away, Ctrl-C), `Chat` undoes it entirely and the pages get
a fresh snapshot; nothing else is lost, and the autosave is only written between replies.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pydantic

from halo_client import config as config_file
from halo_client.client import KoboldClient, TokenEvent
from halo_client.config import Config, describe_error
from halo_client.conversation.chat import Chat
from halo_client.conversation.memory import Memory, Recall
from halo_client.conversation.pruner import PruneEvent, Pruner
from halo_client.conversation.session import Session, SessionError, to_json
from halo_client.conversation.state import ConversationState
from halo_client.conversation.tracker import AttentionTracker
from halo_client.display.scale import conversation_levels
from halo_client.errors import HaloError, RequestTimeout, ServerBusy, ServerUnreachable, Unauthorized
from halo_client.messages import ModelInfo
from halo_client.ui import export, protocol
from halo_client.ui.inspector import META_KEY, Inspector, ReplyRecord, ReplyRecords, view
from halo_client.ui.palette import buckets
from halo_client.ui.sessions import ModelMismatch, SessionStore
from halo_client.ui.token_attention import TokenAttention

log = logging.getLogger("halo_client.ui")

#: a subscriber: takes JSON text or a binary levels update; must not block (it queues)
Emit = Callable[[str | bytes], None]
POLL_S: Final = 2.0
#: at most one levels update per display frame: a page draws no more often, and fitting the
#: percentile scale to 10,000 tokens costs about a millisecond (see `_pace_levels`)
LEVELS_INTERVAL_S: Final = 1 / 60
BACKOFF_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0)
#: the columns whose changes the page is sent
_SYNCED: Final = ("deleted", "pinned", "sentence", "template")


class WorkbenchError(HaloError):
    """A command that cannot be done now or with these values (shown on the page)."""


def _message(message_type: str, /, **fields: Any) -> str:
    return json.dumps({"type": message_type, **fields}, separators=(",", ":"), allow_nan=False)


def _kind_of(error: BaseException) -> str:
    """The page's banner for an error: busy, unauthorized, unreachable, or a plain error."""
    if isinstance(error, ServerBusy):
        return "busy"
    if isinstance(error, Unauthorized):
        return "unauthorized"
    if isinstance(error, ServerUnreachable | RequestTimeout):
        return "unreachable"
    return "error"


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def event_json(event: PruneEvent, reason: str | None = None) -> dict[str, Any]:
    """One prune or restore for the page's activity log, with why where it is not the pruner's
    budget (e.g. a restore "recalled" by memory); the page shows the reason as it comes."""
    return {"action": "restored" if event.restored else "pruned", "reason": reason,
            "kind": event.kind, "unit": event.unit, "turn": event.turn, "positions": list(event.positions),
            "score": _finite(event.score), "tokens": abs(event.tokens_freed), "text": event.text}


def texts_for(state: ConversationState, positions: npt.NDArray[np.int64]) -> list[str]:
    """Display texts of `positions` (ascending), each decoded with the rest of its turn so that
    a character split over tokens is drawn once (protocol.display_texts)."""
    out: dict[int, str] = {}
    turn_of = state.column("turn")
    for turn in np.unique(turn_of[positions]).tolist():
        span = state.turns[turn]
        wanted = positions[turn_of[positions] == turn]
        last = int(wanted.max()) + 1
        texts = protocol.display_texts(state.pieces[span.start : last])
        for p in wanted.tolist():
            out[p] = texts[p - span.start]
    return [out[p] for p in positions.tolist()]


@dataclass
class _Streaming:
    """The reply streaming now: its text decoder (a character may span tokens) and whether its
    first token has come."""

    decoder: codecs.IncrementalDecoder
    started: bool = False


class Workbench:
    def __init__(self, client: KoboldClient, *, sessions: SessionStore, settings: Config,
                 settings_path: Path | None = None) -> None:
        self.client = client
        self.sessions = sessions
        self.config = settings
        self.settings_path = settings_path
        self.info: ModelInfo | None = None
        self.chat: Chat | None = None
        self.session_name: str | None = None
        self.inspector = Inspector()
        self.attention = TokenAttention()
        self.epoch = 0
        self.connection: dict[str, Any] = {"status": "connecting", "message": f"connecting to {client.url}",
                                           "url": client.url, "retry_in": None}
        self._subscribers: list[Emit] = []
        self._sent: dict[str, npt.NDArray[Any]] = {}
        self._drawn = 0
        self._streaming: _Streaming | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None  # set by Stop while a reply streams
        self._monitor_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one model-server request at a time, one structural change at a time
        self._saving: asyncio.Task[None] | None = None  # the autosave being written
        self._levels_at = 0.0  # loop time of the last paced levels update
        self._levels_timer: asyncio.TimerHandle | None = None
        self._due: tuple[int, float] | None = None  # (newest position, its arrival in ms) not yet sent
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        self._monitor_task = asyncio.create_task(self._monitor(), name="halo-ui-monitor")

    async def close(self) -> None:
        """Stop the reply (it is discarded, as a dropped connection would) and the monitor, and
        let the last autosave finish."""
        for task in (self._reply_task, self._monitor_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._levels_timer is not None:
            self._levels_timer.cancel()
        if self._saving is not None:
            await asyncio.shield(self._saving)

    @property
    def busy(self) -> bool:
        return self._reply_task is not None and not self._reply_task.done()

    async def idle(self) -> None:
        """Wait until the reply now streaming (if any) has ended and been sent to the pages, and
        its autosave is written."""
        task = self._reply_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        if self._saving is not None:
            await asyncio.shield(self._saving)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until a chat is set up with the model server (tests, tools)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.chat is None or self.connection["status"] != "connected":
            if loop.time() > deadline:
                raise WorkbenchError(f"no chat with {self.client.url} after {timeout:g} s: "
                                     f"{self.connection['message']}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ subscribers

    def subscribe(self, emit: Emit) -> None:
        self._subscribers.append(emit)
        emit(self._snapshot())
        if self.chat is not None:
            emit(self._levels())

    def unsubscribe(self, emit: Emit) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(emit)

    def _broadcast(self, message: str | bytes) -> None:
        for emit in list(self._subscribers):
            emit(message)

    # ------------------------------------------------------------------ connection

    async def _monitor(self) -> None:
        """Keep the model server's status current: poll while idle, retry with backoff while
        it is away, and set up the chat when it (or another model) comes."""
        failures = 0
        while True:
            self._wake.clear()
            if not self.busy:
                try:
                    info = await self.client.model_info(refresh=True)
                    await self._connected(info)
                    failures = 0
                except HaloError as exc:
                    delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                    failures += 1
                    self._set_connection(_kind_of(exc), str(exc), delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    def _set_connection(self, status: str, message: str, retry_in: float | None = None) -> None:
        changed = (status, message) != (self.connection["status"], self.connection["message"])
        self.connection = {"status": status, "message": message, "url": self.client.url, "retry_in": retry_in}
        if changed or retry_in is not None:
            self._broadcast(_message("connection", **self.connection, model=self._model_json()))

    async def _connected(self, info: ModelInfo) -> None:
        if self.info != info or self.chat is None:
            async with self._lock:
                await self._open_for_model(info)
        self._set_connection("connected", f"connected to {self.client.url}")

    async def _open_for_model(self, info: ModelInfo) -> None:
        """The chat for the model the server runs: its autosave, else a new chat. `self.info`
        changes only once that chat is in place, so a failure here is retried from scratch."""
        path = self.sessions.autosave_path(info.model_name)
        if path.exists():
            try:
                session = self.sessions.load(path, info.model_name)
            except SessionError as exc:
                kept = path.with_name(f"{path.stem}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}.json")
                with contextlib.suppress(OSError):
                    path.rename(kept)  # kept for the user, out of the autosave's way
                self._notify("error", f"the autosave could not be opened ({exc}); it was kept as {kept.name} "
                                      "and a new chat starts")
            else:
                self._install_session(info, session, None)
                return
        await self._install_new(info, self.config.system_prompt)

    def _model_json(self) -> dict[str, Any] | None:
        info = self.info
        if info is None:
            return None
        return {"name": info.model_name, "layers": info.num_layers, "heads": info.num_attention_heads,
                "kv_heads": info.num_key_value_heads, "context": info.max_context_length,
                "attention": info.attention.available, "attention_reason": info.attention.reason,
                "layouts": list(info.attention.layouts),
                "frame_layout": self.chat.frame_layout if self.chat is not None else None}

    # ------------------------------------------------------------------ chats

    def _chat(self) -> Chat:
        if self.chat is None:
            raise WorkbenchError(f"no chat yet: the model server at {self.client.url} has not answered")
        return self.chat

    def _new_chat(self, info: ModelInfo, state: ConversationState | None = None,
                  session: Session | None = None) -> Chat:
        cfg = self.config
        return Chat(self.client, info, state=state, tracker=session.tracker if session else cfg.tracker,
                    pruner=session.pruner if session else cfg.pruner, memory=session.memory if session else cfg.memory,
                    max_length=cfg.sampler.max_length,
                    sampler=cfg.sampler.request_fields(), meta=dict(session.meta) if session else {})

    async def _install_new(self, info: ModelInfo, system: str) -> None:
        chat = self._new_chat(info)
        if system.strip():
            await chat.add_message("system", system)
        self._install(info, chat, ReplyRecords(), None)

    def _install_session(self, info: ModelInfo, session: Session, name: str | None) -> None:
        chat = self._new_chat(info, session.state, session)
        self._install(info, chat, ReplyRecords.from_meta(session.meta.get(META_KEY), session.state), name)

    def _install(self, info: ModelInfo, chat: Chat, records: ReplyRecords, name: str | None) -> None:
        self.info = info
        self.chat = chat
        self.session_name = name
        self.inspector.reset(records)
        self.attention = TokenAttention()
        self._reset_sync()
        self._broadcast(self._snapshot(reset=True))
        self._broadcast(self._levels())

    def session(self) -> Session:
        chat = self._chat()
        chat.meta[META_KEY] = self.inspector.records.to_meta()
        return chat.session()

    def _autosave(self) -> None:
        """Save the conversation to the model's autosave. The session is copied now (the chat may
        go on while it is written); encoding and writing happen in a worker thread, one save after
        the other, so a long chat's save never holds up the page's updates."""
        if self.chat is None or self.info is None:
            return
        data = to_json(self.session())
        path = self.sessions.autosave_path(self.info.model_name)
        previous = self._saving

        async def write() -> None:
            if previous is not None:
                await previous  # in order: an older save never lands after a newer one
            try:
                await asyncio.to_thread(self.sessions.write, data, path)
            except SessionError as exc:
                self._notify("error", f"autosave failed: {exc}")

        self._saving = asyncio.create_task(write(), name="halo-ui-autosave")

    def _notify(self, kind: str, message: str, command: str | None = None, **extra: Any) -> None:
        self._broadcast(_message("error", kind=kind, message=message, command=command, **extra))

    # ------------------------------------------------------------------ what the page sees

    def _reset_sync(self) -> None:
        self.epoch += 1
        self._drawn = 0
        self._sent = {}

    def _snapshot(self, *, reset: bool = False) -> str:
        """Everything a page draws. With `reset`, every page gets it (after which the pages and
        the sync state agree on all of the conversation)."""
        chat = self.chat
        body: dict[str, Any] = {
            "connection": self.connection, "model": self._model_json(), "busy": self.busy,
            "settings": self._settings_json(), "schema": Config.model_json_schema(),
            "session": self.session_name, "epoch": self.epoch,
            "settings_file": str(self.settings_path or config_file.config_path()),
        }
        if chat is not None:
            state = chat.state
            every = np.arange(len(state), dtype=np.int64)
            body["rows"] = protocol.rows(state, every, texts_for(state, every))
            body["pruned"] = self._pruned_json()
            body["legend"] = self._legend()
            if reset:
                self._drawn = len(state)
                self._sent = {name: state.column(name).copy() for name in _SYNCED}
        return _message("snapshot", **body)

    def _settings_json(self) -> dict[str, Any]:
        """The settings file's values, with the chat's own tracker, pruner and memory (a session
        keeps those it was saved with)."""
        data = self.config.model_dump()
        if self.chat is not None:
            data["tracker"] = self.chat.tracker.settings.model_dump()
            data["pruner"] = self.chat.pruner.settings.model_dump()
            data["memory"] = self.chat.memory.settings.model_dump()
        return data

    def _pruned_json(self) -> list[dict[str, Any]]:
        chat = self._chat()
        units = chat.pruner.pruned_units(chat.state)
        return [{"positions": list(u.positions), "kind": u.kind, "unit": u.unit, "turn": u.turn,
                 "score": _finite(u.score), "text": u.text} for u in reversed(units)]  # newest first

    def _legend(self) -> dict[str, Any]:
        chat = self._chat()
        active = chat.state.active_positions()
        _levels, scale = conversation_levels(chat.state, active, self.config.view.scale)
        return {"text": scale.legend(), "mode": scale.mode, "low": scale.low, "high": scale.high,
                "count": scale.count}

    def _levels(self, newest: int = -1, sent_ms: float = 0.0,
                active: npt.NDArray[np.int64] | None = None) -> bytes:
        chat = self._chat()
        state = chat.state
        active = state.active_positions() if active is None else active
        levels, _scale = conversation_levels(state, active, self.config.view.scale)
        return protocol.encode_levels(self.epoch, state.brightness[active], buckets(levels), newest=newest,
                                      sent_ms=sent_ms)

    def _changed_since_sent(self) -> tuple[npt.NDArray[np.int64], list[int], list[int]]:
        """Drawn positions whose synced columns changed since the page got them, and of those
        the ones newly deleted (to flash) and newly restored. Positions drawn from `token`
        messages (the streamed reply) were never sent as rows: they count as changed."""
        state = self._chat().state
        drawn = self._drawn
        changed = np.zeros(drawn, bool)
        flash: list[int] = []
        back: list[int] = []
        for name in _SYNCED:
            before = self._sent.get(name, np.zeros(0, bool))
            k = min(before.size, drawn)
            now = state.column(name)[:k]
            changed[:k] |= now != before[:k]
            changed[k:] = True
            if name == "deleted":
                flash = np.flatnonzero(now & ~before[:k]).tolist()
                back = np.flatnonzero(~now & before[:k]).tolist()
        return np.flatnonzero(changed).astype(np.int64), flash, back

    def _sync(self, events: list[PruneEvent] | None = None, *, upto: int | None = None,
              recalled: list[Recall] | None = None) -> None:
        """Send every page what changed in the conversation, and the tokens it has not drawn,
        up to `upto` (default: all of them); `recalled`: what memory brought back first."""
        chat = self._chat()
        state = chat.state
        n = len(state) if upto is None else upto
        existing, flash, back = self._changed_since_sent()
        new = np.arange(self._drawn, n, dtype=np.int64)
        if flash or back:
            self.epoch += 1
        logged = [event_json(r.event, f"recalled, relevance {r.relevance:.2f}") for r in recalled or []]
        logged += [event_json(e) for e in events or []]
        if existing.size or new.size or logged:
            self._broadcast(_message(
                "rows", epoch=self.epoch, update=protocol.rows(state, existing),
                add=protocol.rows(state, new, texts_for(state, new)), flash=flash, restored=back,
                events=logged, pruned=self._pruned_json(),
                legend=self._legend(), model=self._model_json()))
        self._drawn = n
        self._sent = {name: state.column(name)[:n].copy() for name in _SYNCED}

    # ------------------------------------------------------------------ commands

    async def handle(self, raw: str | bytes, reply: Emit) -> None:
        """One message from a page. Answers go to `reply` (that page) or to every page."""
        try:
            command = protocol.COMMAND.validate_json(raw)
        except pydantic.ValidationError as exc:
            reply(_message("error", kind="invalid", message=f"not a workbench command: {describe_error(exc)}",
                           command=None))
            return
        try:
            await self._dispatch(command, reply)
        except (HaloError, pydantic.ValidationError) as exc:
            message = (f"invalid settings: {describe_error(exc)}" if isinstance(exc, pydantic.ValidationError)
                       else str(exc))
            extra: dict[str, Any] = {}
            if isinstance(exc, ModelMismatch):
                extra = {"saved_model": exc.saved, "running_model": exc.running}
            reply(_message("error", kind="mismatch" if extra else _kind_of(exc), message=message,
                           command=command.type, **extra))
            if isinstance(exc, ServerUnreachable | RequestTimeout):
                self._wake.set()

    async def _dispatch(self, command: protocol.Command, reply: Emit) -> None:
        if isinstance(command, protocol.Resync):
            reply(self._snapshot())
            if self.chat is not None:
                reply(self._levels())
            return
        if isinstance(command, protocol.Stop):
            if self._stop is not None:
                self._stop.set()  # Chat sends the contract's abort; the reply so far is kept
            return
        if isinstance(command, protocol.TokenInfo):
            reply(_message("token_info", **self.token_info(command.position)))
            return
        if isinstance(command, protocol.TokenTable):
            reply(_message("token_table", **self.token_table()))
            return
        if isinstance(command, protocol.ListSessions):
            reply(_message("sessions", sessions=self.sessions.names(), directory=str(self.sessions.directory)))
            return
        if isinstance(command, protocol.Export):
            reply(self._export(command.format))
            return
        if isinstance(command, protocol.ChangeSettings) and set(command.changes) <= {"view"}:
            self._change_settings(command.changes)  # how it is drawn: fine while a reply streams
            return
        if self.busy:
            raise WorkbenchError("a reply is streaming: wait for it, or Stop it, first")
        if isinstance(command, protocol.Send):
            self._chat()
            self._reply_task = asyncio.create_task(self._send(command.text), name="halo-ui-reply")
            return
        async with self._lock:
            await self._change(command, reply)

    async def _change(self, command: protocol.Command, reply: Emit) -> None:
        """Commands that change the conversation or use the model server (under the lock)."""
        if isinstance(command, protocol.Inspect):
            chat = self._chat()
            values, columns = await self.inspector.frame(self.client, chat.state, command.position)
            reply(_message("inspection", position=command.position,
                           text=protocol.piece_label(chat.state.pieces[command.position]),
                           **view(values, columns, chat.state, layer=command.layer, head=command.head,
                                  scale=command.scale)))
            return
        if isinstance(command, protocol.ChangeSettings):
            self._change_settings(command.changes)
            return
        if isinstance(command, protocol.NewChat):
            self._chat()
            await self._install_new(self._connected_info(),
                                    self.config.system_prompt if command.system is None else command.system)
            self._autosave()
            return
        if isinstance(command, protocol.SaveSession):
            path = self.sessions.path(command.name)
            self.sessions.save(self.session(), path)
            self.session_name = command.name
            self._broadcast(_message("saved", name=command.name, path=str(path)))
            reply(_message("sessions", sessions=self.sessions.names(), directory=str(self.sessions.directory)))
            return
        if isinstance(command, protocol.OpenSession | protocol.UploadSession):
            info = self._connected_info()
            if isinstance(command, protocol.OpenSession):
                session = self.sessions.load(self.sessions.path(command.name), info.model_name, force=command.force)
            else:
                session = SessionStore.parse(command.session, command.name, info.model_name, force=command.force)
            self._install_session(info, session, command.name)
            self._autosave()
            return
        chat = self._chat()
        events: list[PruneEvent]
        if isinstance(command, protocol.Pin):
            if command.sentence < 0:
                raise WorkbenchError("template tokens are not a sentence: they are never pruned on their own")
            chat.state.pin(command.sentence, command.pinned)
            events = []
        elif isinstance(command, protocol.PruneSentence):
            events = chat.pruner.prune_sentence(chat.state, command.sentence)
        elif isinstance(command, protocol.PruneNow):
            result = chat.prune()
            events = result.events
            if result.over_budget:
                self._notify("warning", result.message, over_budget=True)
        elif isinstance(command, protocol.Restore):
            events = [self._restore(command.position)]
        else:  # pragma: no cover - every command type is handled above
            raise WorkbenchError(f"unknown command {command.type}")
        self._sync(events)
        self._broadcast(self._levels())
        self._autosave()

    def _connected_info(self) -> ModelInfo:
        if self.info is None:
            raise WorkbenchError(f"the model server at {self.client.url} has not answered yet")
        return self.info

    def _restore(self, position: int) -> PruneEvent:
        chat = self._chat()
        for unit in chat.pruner.pruned_units(chat.state):
            if position in unit.positions:
                return Pruner.restore(chat.state, unit)
        raise WorkbenchError(f"position {position} is not in a pruned unit")

    def _change_settings(self, changes: dict[str, Any]) -> None:
        """Validate (the settings file's models, the command line's ranges), apply to the chat
        now, and write the settings file. A new budget prunes at once."""
        # on top of what the page shows: an opened session's own tracker and pruner settings, so
        # changing one of them keeps the others (and the file then holds what the page showed)
        new = Config.model_validate(self._settings_json()).merged(changes)
        old, self.config = self.config, new
        chat = self.chat
        events: list[PruneEvent] = []
        if chat is not None:
            if "tracker" in changes:
                frames = chat.tracker.frames
                chat.tracker = AttentionTracker(new.tracker)
                chat.tracker.frames = frames
                chat.state.initial_brightness = new.tracker.initial_brightness
            if "pruner" in changes:
                chat.pruner = Pruner(new.pruner)
                result = chat.prune()
                events = result.events
                if result.over_budget:
                    self._notify("warning", result.message, over_budget=True)
            if "memory" in changes:
                chat.memory = Memory(new.memory)
            chat.max_length = new.sampler.max_length
            chat.sampler = new.sampler.request_fields()
        saved = None
        try:
            saved = str(config_file.save(new, self.settings_path))
        except HaloError as exc:
            self._notify("error", f"the settings apply now but were not saved: {exc}", "settings")
        self._broadcast(_message("settings", settings=self._settings_json(), saved=saved,
                                 model=self._model_json()))
        if chat is not None:
            if events:
                self._sync(events)
            if events or new.view.scale != old.view.scale:
                self._broadcast(_message("legend", legend=self._legend()))
                self._broadcast(self._levels())
            if events:
                self._autosave()
            if "system_prompt" in changes and not any(t.role != "system" for t in chat.state.turns) and not self.busy:
                # nothing said yet: the new system prompt starts the chat over at once
                self._reply_task = asyncio.create_task(self._restart(new.system_prompt), name="halo-ui-restart")

    async def _restart(self, system: str) -> None:
        async with self._lock:
            try:
                await self._install_new(self._connected_info(), system)
                self._autosave()
            except HaloError as exc:
                self._notify(_kind_of(exc), str(exc), "settings")

    def _export(self, kind: str) -> str:
        chat = self._chat()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = self.info.model_name if self.info else "model"
        if kind == "session":
            content = json.dumps(to_json(self.session()), separators=(",", ":"), allow_nan=False)
            return _message("export", format=kind, filename=f"halo-{model}-{stamp}.json", content=content)
        active = chat.state.active_positions()
        levels, scale = conversation_levels(chat.state, active, self.config.view.scale)
        page = export.render_html(chat.state, levels_of=dict(zip(active.tolist(), buckets(levels).tolist(),
                                                                strict=True)),
                                  legend=scale.legend(), model=model, details=self.token_info,
                                  show_pruned=self.config.view.show_pruned)
        return _message("export", format=kind, filename=f"halo-{model}-{stamp}.html", content=page)

    # ------------------------------------------------------------------ tooltip

    def token_info(self, position: int) -> dict[str, Any]:
        chat = self._chat()
        state = chat.state
        if not 0 <= position < len(state):
            raise WorkbenchError(f"no token at position {position}")
        row = state.row(position)
        seen = self.attention.get(position)
        source_text = (protocol.piece_label(state.pieces[seen.peak_from])
                       if seen.peak_from is not None and seen.peak_from < len(state) else None)
        return {
            "position": position, "token_id": row.token_id, "label": protocol.piece_label(row.piece),
            "partial": protocol.piece_label(row.piece) != row.piece.decode("utf-8", "replace"),
            "role": row.role, "turn": row.turn, "sentence": row.sentence, "template": row.template,
            "brightness": float(row.brightness), "latest": _finite(seen.latest), "peak": _finite(seen.peak),
            "peak_from": seen.peak_from, "peak_from_text": source_text, "pinned": row.pinned,
            "deleted": row.deleted, "reason": row.deleted_reason,
            "generated": self.inspector.records.find(position) is not None,
        }

    def token_table(self) -> dict[str, Any]:
        """The token dictionary's peak columns for every position (-1: none yet), vectorized:
        a page asks for them about once a second while a reply streams."""
        peak, source = self.attention.table(len(self._chat().state))
        return {"peak": np.round(np.nan_to_num(peak.astype(np.float64), nan=-1.0), 8).tolist(),
                "peak_from": source.tolist()}

    # ------------------------------------------------------------------ replies

    async def _send(self, text: str) -> None:
        chat = self._chat()
        self._broadcast(_message("busy", busy=True))
        try:
            async with self._lock:
                try:
                    await chat.add_message("user", text)
                except HaloError as exc:
                    self._notify(_kind_of(exc), f"the message was not sent: {exc}", "send")
                    return
                self._sync()
                self._broadcast(self._levels())
                await self._reply(chat)
        finally:
            self._broadcast(_message("busy", busy=False))
            self._wake.set()

    async def _reply(self, chat: Chat) -> None:
        self._streaming = _Streaming(codecs.getincrementaldecoder("utf-8")(errors="replace"))
        start = len(chat.state)
        self._stop = asyncio.Event()
        try:
            reply = await chat.reply(self._on_token, stop=self._stop)
        except BaseException as exc:
            self._streaming = None
            self._stop = None
            self._cancel_paced_levels()
            self.attention.forget_from(start)
            self._reset_sync()
            self._broadcast(self._snapshot(reset=True))
            self._broadcast(self._levels())
            if isinstance(exc, HaloError):
                self._notify(_kind_of(exc), f"the reply failed and was undone: {exc}", "send")
                if isinstance(exc, ServerUnreachable | RequestTimeout):
                    self._wake.set()
                return
            raise
        self._streaming = None
        self._stop = None
        if reply.positions:
            self.inspector.records.add(ReplyRecord(np.asarray(reply.context_positions, np.int64),
                                                   tuple(reply.positions)))
        self._sync(reply.pruned_before.events + reply.pruned_after.events, recalled=reply.recalled)
        # if a timer still holds the last token's update, this one stands in for it: the page's
        # display lag is then measured from that token's arrival
        last = self._due[1] if self._due is not None else 0.0
        self._cancel_paced_levels()
        self._broadcast(self._levels(sent_ms=last))
        done = reply.done
        self._broadcast(_message("reply_done", finish_reason=done.finish_reason, tokens=done.token_count,
                                 tokens_per_second=done.timings.tokens_per_second,
                                 over_budget=reply.pruned_after.over_budget))
        self._autosave()

    def _on_token(self, event: TokenEvent) -> None:
        """Per generated token, after Chat added it and the tracker applied its frame."""
        arrived = time.time() * 1000.0
        chat, streaming = self._chat(), self._streaming
        assert streaming is not None
        state = chat.state
        position = len(state) - 1
        active = state.active_positions()
        if not streaming.started:
            streaming.started = True
            self._sync(upto=position)  # the reply's opening template, and what Chat pruned to fit
        self._broadcast(_message("token", index=event.index, position=position, token_id=event.token_id,
                                 turn=len(state.turns) - 1, text=streaming.decoder.decode(event.piece)))
        self._drawn = position + 1
        frame = event.attention
        if frame is not None:
            columns = active[: frame.ctx]
            self.attention.observe(columns, chat.tracker.aggregate(frame.values, frame.layout), position)
        self._due = (position, arrived)
        self._pace_levels(active)

    def _pace_levels(self, active: npt.NDArray[np.int64] | None = None) -> None:
        """Send the due levels update now, or, when the last one went out less than a display
        frame ago, at that frame's end: tokens faster than 60 per second share updates (the page
        could not draw them apart anyway), slower ones each get their own."""
        loop = asyncio.get_running_loop()
        wait = self._levels_at + LEVELS_INTERVAL_S - loop.time()
        if wait <= 0:
            self._send_due_levels(active)
        elif self._levels_timer is None:
            self._levels_timer = loop.call_later(wait, self._send_due_levels)

    def _send_due_levels(self, active: npt.NDArray[np.int64] | None = None) -> None:
        self._levels_timer = None
        due, self._due = self._due, None
        # only once the page has every token of the state (a timer fires between tokens)
        if due is None or self.chat is None or self._drawn != len(self.chat.state):
            return
        self._levels_at = asyncio.get_running_loop().time()
        self._broadcast(self._levels(newest=due[0], sent_ms=due[1], active=active))

    def _cancel_paced_levels(self) -> None:
        if self._levels_timer is not None:
            self._levels_timer.cancel()
            self._levels_timer = None
        self._due = None
