"""A user doing anything, in any order, while the model server fails in every way it can.

Two hypothesis state machines share the server's side: the mock server (a real socket, strict
ChatML: a request whose template was damaged is refused) with its fault plan changed at random
(dropped connections, slow frames, BUSY, damaged and truncated frames, error messages) and
restarted on the same port. `ChatMachine` drives `Chat` as the terminal chat does;
`WorkbenchMachine` drives the workbench's controller with the page's own commands and watches it
with a page model. After every step both check:

- the state's invariants (the checks a saved session must pass, valid ChatML, pinned text
  never pruned, every interrupted turn a complete reply);
- the saved session loads back equal;
- nothing the user wrote is lost: every message is in the conversation once, or was handed back
  (the exception of a refused or undone exchange; the workbench's error carries its text);
- the request the server got was exactly the conversation's active tokens then.

`STEPS` counts the steps that ran clean (`make soak` reports it).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from halo_client.client import KoboldClient
from halo_client.config import Config, SamplerSettings
from halo_client.conversation.chat import Chat, MessageTooLong, ReplyStep
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.session import from_json, load, to_json
from halo_client.conversation.state import ConversationError
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings
from halo_client.errors import HaloError
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer, check_chatml
from halo_client.ui.sessions import SessionStore
from halo_client.ui.workbench import Workbench
from tests.ui.page_model import PageModel

#: steps that ran with every check passing, by machine
STEPS: Counter[str] = Counter()
CONTEXT = 400

MESSAGES = st.one_of(
    st.sampled_from(["Hi! My locker code is 4817.", "I grew up in Lisbon. It is sunny.", "Why?",
                     "Tell me about boats.\n\nAnd rivers.", "Emoji 😀 and 世界.", "Dr. Who came back... then left.",
                     "Literal <|im_end|> text stays text.", "Okay."]),
    st.text(alphabet=st.sampled_from(list("ab .!?\n😀")), min_size=1, max_size=40).filter(str.strip),
    st.integers(300, 900).map(lambda n: "word " * n),  # longer than the context can hold
)
FAULTS = st.one_of(
    st.just(FaultPlan()),
    st.builds(FaultPlan, drop_before_token=st.integers(0, 12)),
    st.builds(FaultPlan, token_delay_s=st.sampled_from([0.002, 0.01])),
    st.just(FaultPlan(always_busy=True)),
    st.builds(FaultPlan, corrupt_frame_at=st.integers(0, 12)),
    st.builds(FaultPlan, truncate_frame_at=st.integers(0, 12)),
    st.builds(FaultPlan, error_at=st.integers(0, 12)),
)
PRUNER = st.builds(PrunerSettings, max_context_tokens=st.sampled_from([0, 60, 120, 200]),
                   granularity=st.sampled_from(["sentence", "line", "turn"]), protect_exchanges=st.integers(0, 2),
                   recent_share=st.sampled_from([0.0, 0.5, 0.75]))
TRACKER = st.builds(TrackerSettings, decay=st.sampled_from([0.0, 0.01]),
                    aggregation=st.sampled_from(["mean", "max", "last_layer"]))


def soak_settings() -> dict[str, Any]:
    """How long a run is: bounded for `make test`, long for `make soak` (HALO_SOAK_EXAMPLES)."""
    return {"max_examples": int(os.environ.get("HALO_SOAK_EXAMPLES", "15")),
            "stateful_step_count": int(os.environ.get("HALO_SOAK_STEPS", "15"))}


#: which of the things there are now a step acts on (drawn the same way whatever the state holds,
#: so that hypothesis can replay and shrink a failing run)
PICK = st.integers(0, 2**16)


def pick_sentence(chat: Chat, pick: int) -> int | None:
    state = chat.state
    sentences = np.unique(state.column("sentence")[state.active_mask() & ~state.column("template")])
    return int(sentences[pick % sentences.size]) if sentences.size else None


def user_texts(chat: Chat) -> list[str]:
    """Every user message in the conversation, pruned or not, as its tokens spell it."""
    state, template = chat.state, chat.state.column("template")
    return [state.text([p for p in range(t.start, t.end) if not template[p]]) for t in state.turns
            if t.role == "user"]


def check_state(chat: Chat) -> None:
    state = chat.state
    # the saved session loads back equal (from_json checks every invariant a saved state keeps)
    saved = to_json(chat.session())
    assert to_json(from_json(json.loads(json.dumps(saved)))) == saved
    assert all(t.complete for t in state.turns)
    check_chatml(state.input_ids())
    assert not (state.column("pinned") & state.column("deleted")).any(), "pinned text was pruned"
    assert all(state.turns[t].role == "assistant" for t in chat.interrupted_turns())


class FaultyServer(RuleBasedStateMachine):
    """What both machines share: the model server's faults and restarts, and the user's sends."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.backend = MockBackend(strict_template=True, max_context_length=CONTEXT)
        self.server = MockKoboldServer(backend=self.backend)
        self.run(self.server.start())
        self.port = self.server.port
        self.client = KoboldClient(self.server.url, timeout=10)
        self.written: list[str] = []  # every message in the conversation, in order

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.run(self.server.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(plan=FAULTS)
    def server_faults(self, plan: FaultPlan) -> None:
        self.server.faults = plan

    @rule()
    def server_restart(self) -> None:
        """The server goes away and comes back on the same port (a restarted KoboldCPP)."""
        faults = self.server.faults
        self.run(self.server.close())
        self.server = MockKoboldServer(backend=self.backend, port=self.port, faults=faults)
        self.run(self.server.start())

    def _send(self, text: str, stop_after: int | None) -> None:
        """Send `text` (and Stop the reply after `stop_after` tokens), checking what it left."""
        raise NotImplementedError

    @rule(text=MESSAGES)
    def send(self, text: str) -> None:
        self._send(text, None)

    @rule(text=MESSAGES, after=st.integers(1, 6))
    def send_and_stop(self, text: str, after: int) -> None:
        self._send(text, after)

    def request_was_active(self, expected: list[int]) -> None:
        """The request the server got last is `expected`: the active tokens when it was made."""
        assert self.backend.received[-1] == expected


class ChatMachine(FaultyServer):
    """`Chat` as `halo-client chat` drives it."""

    @initialize()
    def open_chat(self) -> None:
        self.chat: Chat = self.run(Chat.open(self.client, system="Be brief.", max_length=24,
                                             sampler={"temperature": 0}))

    def _send(self, text: str, stop_after: int | None) -> None:
        chat = self.chat
        before = json.dumps(to_json(chat.session()))
        stop = asyncio.Event()
        sent: list[list[int]] = []

        def on_token(step: ReplyStep) -> None:
            assert chat.state.row(step.position).token_id == step.token_id
            if stop_after is not None and step.index + 1 >= stop_after:
                stop.set()

        try:
            reply = self.run(chat.send(text, on_token, stop, on_start=lambda: sent.append(chat.state.input_ids())))
        except (MessageTooLong, HaloError):
            assert json.dumps(to_json(chat.session())) == before, "a failed exchange left something behind"
            return
        self.written.append(text)
        self.request_was_active(sent[-1])
        assert reply.input_ids == sent[-1]
        if reply.interrupted is None and reply.done.finish_reason != "aborted":
            assert reply.done.finish_reason in ("eos", "length", "stop_token")

    @rule()
    def prune_now(self) -> None:
        self.chat.prune()

    @rule(pick=PICK)
    def restore(self, pick: int) -> None:
        units = self.chat.pruner.pruned_units(self.chat.state)
        if units:
            Pruner.restore(self.chat.state, units[pick % len(units)])

    @rule(pick=PICK, by_hand=st.booleans())
    def pin_or_prune_a_sentence(self, pick: int, by_hand: bool) -> None:
        state = self.chat.state
        sentence = pick_sentence(self.chat, pick)
        if sentence is None:
            return
        if not by_hand:
            state.pin(sentence, not bool(state.column("pinned")[state.column("sentence") == sentence].any()))
            return
        before = json.dumps(to_json(self.chat.session()))
        try:
            self.chat.pruner.prune_sentence(state, sentence)
        except ConversationError:
            assert json.dumps(to_json(self.chat.session())) == before

    @rule(pruner=PRUNER, tracker=TRACKER, max_length=st.sampled_from([8, 24, 60]))
    def change_settings(self, pruner: PrunerSettings, tracker: TrackerSettings, max_length: int) -> None:
        frames = self.chat.tracker.frames
        self.chat.pruner = Pruner(pruner)
        self.chat.tracker = AttentionTracker(tracker)
        self.chat.tracker.frames = frames
        self.chat.max_length = max_length

    @rule()
    def save_and_load(self) -> None:
        path = self.dir / "chat.json"
        self.chat.save(str(path))
        saved = to_json(load(path))
        chat: Chat = self.run(Chat.open(self.client, session_path=str(path), max_length=self.chat.max_length,
                                        sampler={"temperature": 0}))
        assert to_json(chat.session()) == saved == to_json(self.chat.session())
        assert chat.turns.history == self.chat.turns.history
        self.chat = chat

    @invariant()
    def nothing_lost_nothing_broken(self) -> None:
        if not hasattr(self, "chat"):
            return
        check_state(self.chat)
        assert user_texts(self.chat) == self.written
        assert [h["content"] for h in self.chat.turns.history if h["role"] == "user"] == self.written
        STEPS["chat"] += 1


class WorkbenchMachine(FaultyServer):
    """The workbench's controller, driven with the page's commands, watched by a page model."""

    @initialize()
    def open_workbench(self) -> None:
        self.workbench = Workbench(self.client, sessions=SessionStore(self.dir / "sessions"),
                                   settings=Config(sampler=SamplerSettings(temperature=0.0, max_length=24)),
                                   settings_path=self.dir / "settings.json")
        self.page = PageModel()
        self.workbench.subscribe(self.page)
        self.run(self.workbench.start())
        self.run(self.workbench.wait_connected())
        self.saved_names: list[str] = []

    def teardown(self) -> None:
        if hasattr(self, "workbench"):
            self.run(self.workbench.close())
        super().teardown()

    def command(self, **command: Any) -> PageModel:
        answers = PageModel()
        self.run(self.workbench.handle(json.dumps(command), answers))
        return answers

    @property
    def chat(self) -> Chat:
        assert self.workbench.chat is not None
        return self.workbench.chat

    def _send(self, text: str, stop_after: int | None) -> None:
        received = len(self.backend.received)
        errors = len(self.page.of("error"))
        done = len(self.page.of("reply_done"))
        tokens = len(self.page.of("token"))
        answer = self.command(type="send", text=text)
        if answer.of("error"):
            return  # refused at once (a reply still streaming cannot be: the last one was waited for)

        async def stop_when_due() -> None:
            if stop_after is not None:
                await self.page.wait_for(lambda: not self.workbench.busy
                                         or len(self.page.of("token")) - tokens >= stop_after)
                await self.workbench.handle(json.dumps({"type": "stop"}), PageModel())
            await self.workbench.idle()

        self.run(stop_when_due())
        failed = [e for e in self.page.of("error")[errors:]
                  if e["command"] == "send" and e.get("outcome") in ("refused", "undone")]
        if failed:
            # handed back: the page puts it in the box again, and the conversation does not have it
            assert [e["text"] for e in failed] == [text] and len(self.page.of("reply_done")) == done
            return
        assert len(self.page.of("reply_done")) == done + 1
        self.written.append(text)
        assert len(self.backend.received) > received
        streamed = self.page.of("token")[tokens:]
        if streamed:  # the reply's request was the active tokens when it was made (ids never change)
            found = self.workbench.inspector.records.find(streamed[-1]["position"])
            assert found is not None
            self.request_was_active(self.chat.state.column("token_id")[found[0].request].tolist())

    @rule()
    def prune_now(self) -> None:
        self.command(type="prune_now")

    @rule(pick=PICK)
    def restore(self, pick: int) -> None:
        units = self.chat.pruner.pruned_units(self.chat.state)
        if units:
            unit = units[pick % len(units)]
            assert not self.command(type="restore", position=unit.positions[0]).of("error")

    @rule(pick=PICK, action=st.sampled_from(["pin", "unpin", "prune_sentence"]))
    def act_on_a_sentence(self, pick: int, action: str) -> None:
        sentence = pick_sentence(self.chat, pick)
        if sentence is None:
            return
        if action == "prune_sentence":
            self.command(type="prune_sentence", sentence=sentence)
        else:
            self.command(type="pin", sentence=sentence, pinned=action == "pin")

    @rule(pruner=PRUNER, max_length=st.sampled_from([8, 24, 60]), decay=st.sampled_from([0.0, 0.01]))
    def change_settings(self, pruner: PrunerSettings, max_length: int, decay: float) -> None:
        answer = self.command(type="settings", changes={"pruner": pruner.model_dump(),
                                                        "sampler": {"max_length": max_length},
                                                        "tracker": {"decay": decay}})
        assert not answer.of("error")

    @rule(name=st.sampled_from(["one", "two"]))
    def save(self, name: str) -> None:
        assert not self.command(type="save", name=name).of("error")
        self.saved_names.append(name)
        saved = to_json(load(self.dir / "sessions" / f"{name}.json"))
        assert saved == to_json(self.workbench.session())

    @rule(name=st.sampled_from(["one", "two"]))
    def open_saved(self, name: str) -> None:
        if name not in self.saved_names:
            return
        saved = to_json(load(self.dir / "sessions" / f"{name}.json"))
        assert not self.command(type="open", name=name).of("error")
        assert to_json(self.workbench.session()) == saved
        self.written = user_texts(self.chat)  # the opened chat's messages are what the user has now

    @invariant()
    def nothing_lost_nothing_broken(self) -> None:
        if not hasattr(self, "workbench"):
            return
        chat = self.chat
        check_state(chat)
        assert user_texts(chat) == self.written
        # the page draws exactly the conversation: every token once, the same ones pruned
        state = chat.state
        assert sorted(self.page.text) == list(range(len(state)))
        assert [self.page.deleted[p] for p in range(len(state))] == state.column("deleted").tolist()
        assert self.page.mismatches == []
        STEPS["workbench"] += 1
