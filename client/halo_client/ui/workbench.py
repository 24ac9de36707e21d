"""`Workbench`: the conversation behind the web page, without any HTTP: the page's controller.

It owns one `Chat` (the same code the command line chats with: state, tracker, pruner,
sessions) against the model server at `--url`, acts on the pages' commands (protocol.py) and
tells the pages what happened: JSON objects for structure (page_messages.py) and, per generated
token, one binary `levels` update. The page only ever draws and asks; every decision is made
here. Its helpers each keep one job: `ServerWatch` the model server's status, `PageSync` what
the pages have been sent (row diffs, epochs, paced levels updates), `Broadcast` the pages.

Commands that change the conversation are refused while a reply streams (except Stop and view
settings): the page's controls say so, and the state is never edited under a running tracker.
A message is one exchange (`Chat.send`), and the page is told its `outcome`: one the server's
context cannot hold is `refused` before anything changes (with its token count and the most it
may have); a reply that fails before its first token is `undone` with the whole exchange (the
error carries the message's `text`, so the page can put it back in the input box); one that
fails later is `interrupted`: it keeps what it wrote, marked. The autosave is only written
between replies.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from halo_client import config as config_file
from halo_client.client import KoboldClient
from halo_client.config import Config, describe_error
from halo_client.conversation.chat import Chat, MessageTooLong, ReplyStep
from halo_client.conversation.memory import Memory
from halo_client.conversation.pruner import PruneEvent, Pruner
from halo_client.conversation.session import Session, SessionError, to_json
from halo_client.conversation.state import ConversationState
from halo_client.conversation.tracker import AttentionTracker
from halo_client.display.scale import conversation_levels
from halo_client.errors import HaloError, RequestTimeout, ServerUnreachable
from halo_client.messages import ModelInfo
from halo_client.ui import export, protocol
from halo_client.ui.broadcast import Broadcast, Emit
from halo_client.ui.inspector import META_KEY, Inspector, ReplyRecord, ReplyRecords, view
from halo_client.ui.page_messages import (
    budget_json,
    finite,
    kind_of,
    legend_json,
    message,
    model_json,
    pruned_json,
    settings_json,
)
from halo_client.ui.page_sync import PageSync
from halo_client.ui.palette import buckets
from halo_client.ui.server_watch import ServerWatch
from halo_client.ui.sessions import ModelMismatch, SessionStore
from halo_client.ui.token_attention import TokenAttention

log = logging.getLogger("halo_client.ui")

__all__ = ["Emit", "Workbench", "WorkbenchError"]


class WorkbenchError(HaloError):
    """A command that cannot be done now or with these values (shown on the page)."""


@dataclass
class _Streaming:
    """The reply streaming now: its text decoder (a character may span tokens) and whether its
    request has gone out."""

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
        self._broadcast = Broadcast()
        self.watch = ServerWatch(client, on_info=self._connected, busy=lambda: self.busy, broadcast=self._broadcast,
                                 model=self._model_json)
        self.sync = PageSync(self._broadcast, lambda: self.chat, lambda: self.config.view.scale, self._rows_extras)
        self._streaming: _Streaming | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None  # set by Stop while a reply streams
        self._lock = asyncio.Lock()  # one model-server request at a time, one structural change at a time
        self._saving: asyncio.Task[None] | None = None  # the autosave being written
        #: memory's embedder, loading for a new chat or settings: every load still running (a
        #: second settings change does not end the first's thread, and close waits for both)
        self._preparing: set[asyncio.Task[None]] = set()

    @property
    def connection(self) -> dict[str, Any]:
        return self.watch.connection

    @property
    def epoch(self) -> int:
        return self.sync.epoch

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        self.watch.start()

    async def close(self) -> None:
        """Stop the reply (it is undone, as a cancelled exchange is) and the watch, and let the
        last autosave finish."""
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reply_task
        await self.watch.stop()
        self.sync.cancel()
        if self._saving is not None:
            await asyncio.shield(self._saving)
        await self._prepared()  # a thread cannot be cancelled: let the loads end

    @property
    def busy(self) -> bool:
        return self._reply_task is not None and not self._reply_task.done()

    async def idle(self) -> None:
        """Wait until the reply now streaming (if any) has ended and been sent to the pages, its
        autosave is written and memory's embedder is loaded."""
        task = self._reply_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        if self._saving is not None:
            await asyncio.shield(self._saving)
        await self._prepared()

    async def _prepared(self) -> None:
        """Wait for every load of memory's embedder still running (each says in the banner how it ended)."""
        while pending := [t for t in self._preparing if not t.done()]:
            await asyncio.gather(*(asyncio.shield(t) for t in pending), return_exceptions=True)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until a chat is set up with the model server (tests, tools)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.chat is None or not self.watch.connected:
            if loop.time() > deadline:
                raise WorkbenchError(f"no chat with {self.client.url} after {timeout:g} s: "
                                     f"{self.connection['message']}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ subscribers

    def subscribe(self, emit: Emit) -> None:
        self._broadcast.add(emit)
        emit(self._snapshot())
        if self.chat is not None:
            emit(self.sync.levels())

    def unsubscribe(self, emit: Emit) -> None:
        self._broadcast.remove(emit)

    # ------------------------------------------------------------------ the model server

    async def _connected(self, info: ModelInfo) -> None:
        if self.info != info or self.chat is None:
            async with self._lock:
                await self._open_for_model(info)

    async def _open_for_model(self, info: ModelInfo) -> None:
        """The chat for the model the server runs: its autosave, else a new chat. `self.info`
        changes only once that chat is in place, so a failure here is retried from scratch."""
        path = self.sessions.autosave_path(info.model_name)
        if path.exists():
            try:
                session = self._checked(self.sessions.load(path, info.model_name), info, path.name)
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
        return model_json(self.info, self.chat)

    # ------------------------------------------------------------------ chats

    def _chat(self) -> Chat:
        if self.chat is None:
            raise WorkbenchError(f"no chat yet: the model server at {self.client.url} has not answered")
        return self.chat

    @staticmethod
    def _checked(session: Session, info: ModelInfo, source: str) -> Session:
        session.check_vocabulary(info.vocab_size, info.model_name, source)
        return session

    def _new_chat(self, info: ModelInfo, state: ConversationState | None = None,
                  session: Session | None = None) -> Chat:
        cfg = self.config
        return Chat(self.client, info, state=state, tracker=session.tracker if session else cfg.tracker,
                    pruner=session.pruner if session else cfg.pruner, memory=session.memory if session else cfg.memory,
                    max_length=cfg.sampler.max_length, sampler=cfg.sampler.request_fields(),
                    meta=dict(session.meta) if session else {},
                    frames_tracked=session.frames_tracked if session else 0)

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
        self._resend_all()
        self._prepare_memory(chat.memory)

    def _resend_all(self) -> None:
        """Every page starts over from a fresh snapshot (a new chat, an undone exchange)."""
        self.sync.reset()
        self._broadcast(self._snapshot(reset=True))
        self._broadcast(self.sync.levels())

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

    def _prepare_memory(self, memory: Memory) -> None:
        """Load the embedder memory's settings name now (a chat was opened, or the settings
        changed), in a thread, its fetch's lines in the pages' banner, rather than at the first
        message inside the reply (the first time it is a download: 404 MB for the default's
        all-mpnet-base-v2-int8, 83 MB for all-MiniLM-L6-v2). A message that comes meanwhile waits for the same load."""
        loop = asyncio.get_running_loop()
        fetched: list[str] = []

        def progress(line: str) -> None:
            fetched.append(line)
            loop.call_soon_threadsafe(self._notify, "info", f"memory: {line}")

        async def load() -> None:
            notice = await asyncio.to_thread(memory.prepare, progress)
            if notice is not None:
                self._notify("warning", notice, "settings")
            elif fetched:  # the banner's last line was the fetch's ("cached ..."): say it is over
                self._notify("info", f"memory: {memory.settings.embedder} is ready")

        task = asyncio.create_task(load(), name="halo-ui-memory")
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    def _notify(self, kind: str, what: str, command: str | None = None, **extra: Any) -> None:
        self._broadcast(message("error", kind=kind, message=what, command=command, **extra))

    # ------------------------------------------------------------------ what the page sees

    def _snapshot(self, *, reset: bool = False) -> str:
        """Everything a page draws. With `reset`, every page gets it (after which the pages and
        the sync state agree on all of the conversation)."""
        chat = self.chat
        body: dict[str, Any] = {
            "connection": self.connection, "model": self._model_json(), "busy": self.busy,
            "settings": settings_json(self.config, chat), "schema": Config.model_json_schema(),
            "session": self.session_name, "epoch": self.sync.epoch,
            "settings_file": str(self.settings_path or config_file.config_path()),
        }
        if chat is not None:
            body["rows"] = self.sync.snapshot_rows(chat, reset=reset)
            body["pruned"] = pruned_json(chat)
            body["legend"] = legend_json(chat, self.config.view.scale)
            body["budget"] = budget_json(chat)
            body["interrupted_turns"] = chat.interrupted_turns()
        return message("snapshot", **body)

    def _rows_extras(self) -> dict[str, Any]:
        """What every `rows` message carries besides the rows."""
        chat = self._chat()
        return {"pruned": pruned_json(chat), "legend": legend_json(chat, self.config.view.scale),
                "model": self._model_json(), "budget": budget_json(chat)}

    # ------------------------------------------------------------------ commands

    async def handle(self, raw: str | bytes, reply: Emit) -> None:
        """One message from a page. Answers go to `reply` (that page) or to every page."""
        try:
            command = protocol.COMMAND.validate_json(raw)
        except pydantic.ValidationError as exc:
            reply(message("error", kind="invalid", message=f"not a workbench command: {describe_error(exc)}",
                          command=None))
            return
        try:
            await self._dispatch(command, reply)
        except (HaloError, pydantic.ValidationError) as exc:
            text = (f"invalid settings: {describe_error(exc)}" if isinstance(exc, pydantic.ValidationError)
                    else str(exc))
            extra: dict[str, Any] = {}
            if isinstance(exc, ModelMismatch):
                extra = {"saved_model": exc.saved, "running_model": exc.running}
            reply(message("error", kind="mismatch" if extra else kind_of(exc), message=text,
                          command=command.type, **extra))
            if isinstance(exc, ServerUnreachable | RequestTimeout):
                self.watch.wake()

    async def _dispatch(self, command: protocol.Command, reply: Emit) -> None:
        if isinstance(command, protocol.Resync):
            reply(self._snapshot())
            if self.chat is not None:
                reply(self.sync.levels())
            return
        if isinstance(command, protocol.Stop):
            if self._stop is not None:
                self._stop.set()  # Chat sends the contract's abort; the reply so far is kept
            return
        if isinstance(command, protocol.TokenInfo):
            reply(message("token_info", **self.token_info(command.position)))
            return
        if isinstance(command, protocol.TokenTable):
            reply(message("token_table", **self.token_table()))
            return
        if isinstance(command, protocol.ListSessions):
            reply(message("sessions", sessions=self.sessions.names(), directory=str(self.sessions.directory)))
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
            reply(message("inspection", position=command.position,
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
            self._broadcast(message("saved", name=command.name, path=str(path)))
            reply(message("sessions", sessions=self.sessions.names(), directory=str(self.sessions.directory)))
            return
        if isinstance(command, protocol.OpenSession | protocol.UploadSession):
            info = self._connected_info()
            if isinstance(command, protocol.OpenSession):
                session = self.sessions.load(self.sessions.path(command.name), info.model_name, force=command.force)
            else:
                session = SessionStore.parse(command.session, command.name, info.model_name, force=command.force)
            self._install_session(info, self._checked(session, info, command.name), command.name)
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
                self._notify("warning", result.message, "prune_now", over_budget=True)
        elif isinstance(command, protocol.Restore):
            events = [self._restore(command.position)]
        else:  # pragma: no cover - every command type is handled above
            raise WorkbenchError(f"unknown command {command.type}")
        self.sync.sync(events)
        self._broadcast(self.sync.levels())
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
        new = Config.model_validate(settings_json(self.config, self.chat)).merged(changes)
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
                self._prepare_memory(chat.memory)
            chat.max_length = new.sampler.max_length
            chat.sampler = new.sampler.request_fields()
        saved = None
        try:
            saved = str(config_file.save(new, self.settings_path))
        except HaloError as exc:
            self._notify("error", f"the settings apply now but were not saved: {exc}", "settings")
        self._broadcast(message("settings", settings=settings_json(new, chat), saved=saved, model=self._model_json(),
                                budget=budget_json(chat) if chat is not None else None))
        if chat is not None:
            if events:
                self.sync.sync(events)
            if events or new.view.scale != old.view.scale:
                self._broadcast(message("legend", legend=legend_json(chat, new.view.scale)))
                self._broadcast(self.sync.levels())
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
                self._notify(kind_of(exc), str(exc), "settings")

    def _export(self, kind: str) -> str:
        chat = self._chat()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = self.info.model_name if self.info else "model"
        if kind == "session":
            content = json.dumps(to_json(self.session()), separators=(",", ":"), allow_nan=False)
            return message("export", format=kind, filename=f"halo-{model}-{stamp}.json", content=content)
        active = chat.state.active_positions()
        levels, scale = conversation_levels(chat.state, active, self.config.view.scale)
        page = export.render_html(chat.state, levels_of=dict(zip(active.tolist(), buckets(levels).tolist(),
                                                                strict=True)),
                                  legend=scale.legend(), model=model, details=self.token_info,
                                  show_pruned=self.config.view.show_pruned)
        return message("export", format=kind, filename=f"halo-{model}-{stamp}.html", content=page)

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
            "brightness": float(row.brightness), "latest": finite(seen.latest), "peak": finite(seen.peak),
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
        self._broadcast(message("busy", busy=True))
        try:
            async with self._lock:
                await self._exchange(chat, text)
        finally:
            self._broadcast(message("busy", busy=False))
            self.watch.wake()

    async def _exchange(self, chat: Chat, text: str) -> None:
        """The message and its reply (`Chat.send`), shown as they happen."""
        self._streaming = _Streaming(codecs.getincrementaldecoder("utf-8")(errors="replace"))
        start = len(chat.state)
        self._stop = asyncio.Event()
        try:
            reply = await chat.send(text, self._on_token, stop=self._stop, on_start=self._on_start)
        except BaseException as exc:
            # undone: the conversation is exactly as before the message
            started = self._streaming is not None and self._streaming.started
            self._streaming = None
            self._stop = None
            if started:
                self.sync.cancel()
                self.attention.forget_from(start)
                self._resend_all()
            if isinstance(exc, MessageTooLong):
                self._notify("too_long", str(exc), "send", outcome="refused", text=text, tokens=exc.tokens,
                             most=exc.most, max_tokens=exc.most)
                return
            if isinstance(exc, HaloError):
                self._notify(kind_of(exc), f"the message was not sent and nothing changed: {exc}", "send",
                             outcome="undone", text=text)
                return
            raise
        self._streaming = None
        self._stop = None
        if reply.positions:
            self.inspector.records.add(ReplyRecord(np.asarray(reply.context_positions, np.int64),
                                                   tuple(reply.positions)))
        self.sync.sync(reply.pruned_before.events + reply.pruned_after.events, recalled=reply.recalled)
        # if a timer still holds the last token's update, this one stands in for it: the page's
        # display lag is then measured from that token's arrival
        held = self.sync.cancel()
        self._broadcast(self.sync.levels(sent_ms=held))
        done = reply.done
        self._broadcast(message("reply_done", finish_reason=done.finish_reason, tokens=done.token_count,
                                tokens_per_second=done.timings.tokens_per_second,
                                over_budget=reply.pruned_after.over_budget, turn=reply.turn,
                                interrupted=reply.interrupted, budget=budget_json(chat)))
        if reply.interrupted is not None:
            # the message was sent and stays (outcome "interrupted"): the page keeps its box empty
            self._notify("interrupted", f"The reply was cut short: {reply.interrupted}.", "send",
                         outcome="interrupted", turn=reply.turn)
            self.watch.wake()
        self._autosave()

    def _on_start(self) -> None:
        """The request is made up: the pages get the message, the reply's opening template, and
        what was recalled and pruned to fit, before the first token."""
        assert self._streaming is not None
        self._streaming.started = True
        self.sync.sync()
        self._broadcast(self.sync.levels())

    def _on_token(self, step: ReplyStep) -> None:
        """Per generated token, after Chat added it and the tracker applied its frame."""
        arrived = time.time() * 1000.0
        chat, streaming = self._chat(), self._streaming
        assert streaming is not None
        state = chat.state
        self.sync.token(step.index, step.position, step.token_id, len(state.turns) - 1,
                        streaming.decoder.decode(step.piece))
        if step.columns is not None and step.attention is not None:
            self.attention.observe(step.columns, step.attention, step.position)
        self.sync.due(step.position, arrived, state.active_positions())
