"""Keeping every page in step with the conversation: row diffs, epochs, and paced levels updates.

Every change to the conversation's structure goes through `sync`, which compares the columns
the pages were last sent (deleted, pinned, sentence, template) with the state's and sends the
rows that differ, plus the tokens they have not drawn yet. A change of the set of active
positions bumps `epoch`; a levels update carries the epoch and count it was computed for, so a
page that missed something notices and asks for a `resync`.

Per generated token the pages get its `token` message at once and a levels update at most once
per display frame (`LEVELS_INTERVAL_S`): tokens faster than 60 a second share one (a page could
not draw them apart), slower ones each get their own, and the last token's is never lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from halo_client.conversation.chat import Chat
from halo_client.conversation.memory import Recall
from halo_client.conversation.pruner import PruneEvent
from halo_client.display.scale import ScaleMode, conversation_levels
from halo_client.ui import protocol
from halo_client.ui.page_messages import event_json, message, prune_summary, texts_for
from halo_client.ui.palette import buckets

#: at most one levels update per display frame: a page draws no more often, and fitting the
#: percentile scale to 10,000 tokens costs about a millisecond
LEVELS_INTERVAL_S: Final = 1 / 60
#: the columns whose changes the pages are sent
SYNCED: Final = ("deleted", "pinned", "sentence", "template")


class PageSync:
    def __init__(self, broadcast: Callable[[str | bytes], None], chat: Callable[[], Chat | None],
                 scale: Callable[[], ScaleMode], extras: Callable[[], dict[str, Any]]) -> None:
        """`chat`: the chat now (None before the model server answered); `scale`: the heat
        scale's mode; `extras`: the fields every `rows` message carries besides the rows (the
        Pruned list, legend, model, budget)."""
        self._broadcast = broadcast
        self._chat = chat
        self._scale = scale
        self._extras = extras
        self.epoch = 0
        self._sent: dict[str, npt.NDArray[Any]] = {}
        self._drawn = 0
        self._levels_at = 0.0  # loop time of the last paced levels update
        self._timer: asyncio.TimerHandle | None = None
        self._due: tuple[int, float] | None = None  # (newest position, its arrival in ms) not yet sent

    def reset(self) -> None:
        """The pages know nothing of the conversation (a new chat, an undone exchange)."""
        self.epoch += 1
        self._drawn = 0
        self._sent = {}

    def snapshot_rows(self, chat: Chat, *, reset: bool) -> dict[str, Any]:
        """Every row, for a snapshot. With `reset` every page gets it, after which the pages and
        this bookkeeping agree on all of the conversation."""
        state = chat.state
        every = np.arange(len(state), dtype=np.int64)
        rows = protocol.rows(state, every, texts_for(state, every))
        if reset:
            self._drawn = len(state)
            self._sent = {name: state.column(name).copy() for name in SYNCED}
        return rows

    def levels(self, newest: int = -1, sent_ms: float = 0.0, active: npt.NDArray[np.int64] | None = None) -> bytes:
        chat = self._chat()
        assert chat is not None
        state = chat.state
        active = state.active_positions() if active is None else active
        levels, _scale = conversation_levels(state, active, self._scale())
        return protocol.encode_levels(self.epoch, state.brightness[active], buckets(levels), newest=newest,
                                      sent_ms=sent_ms)

    def _changed_since_sent(self, chat: Chat) -> tuple[npt.NDArray[np.int64], list[int], list[int]]:
        """Drawn positions whose synced columns changed since the pages got them, and of those
        the ones newly deleted (to flash) and newly restored. Positions drawn from `token`
        messages (the streamed reply) were never sent as rows: they count as changed."""
        state = chat.state
        drawn = self._drawn
        changed = np.zeros(drawn, bool)
        flash: list[int] = []
        back: list[int] = []
        for name in SYNCED:
            before = self._sent.get(name, np.zeros(0, bool))
            k = min(before.size, drawn)
            now = state.column(name)[:k]
            changed[:k] |= now != before[:k]
            changed[k:] = True
            if name == "deleted":
                flash = np.flatnonzero(now & ~before[:k]).tolist()
                back = np.flatnonzero(~now & before[:k]).tolist()
        return np.flatnonzero(changed).astype(np.int64), flash, back

    def sync(self, events: list[PruneEvent] | None = None, *, upto: int | None = None,
             recalled: list[Recall] | None = None) -> None:
        """Send every page what changed in the conversation, and the tokens it has not drawn,
        up to `upto` (default: all of them); `recalled`: what memory brought back first."""
        chat = self._chat()
        assert chat is not None
        state = chat.state
        n = len(state) if upto is None else upto
        existing, flash, back = self._changed_since_sent(chat)
        new = np.arange(self._drawn, n, dtype=np.int64)
        if flash or back:
            self.epoch += 1
        logged = [event_json(r.event, f"recalled by {r.why}") if not r.kept
                  else {**event_json(r.event, f"still in the context, matched by {r.why}"), "action": "kept"}
                  for r in recalled or []]
        logged += [event_json(e) for e in events or []]
        if existing.size or new.size or logged:
            self._broadcast(message(
                "rows", epoch=self.epoch, update=protocol.rows(state, existing),
                add=protocol.rows(state, new, texts_for(state, new)), flash=flash, restored=back,
                events=logged, summary=prune_summary(list(events or [])), **self._extras()))
        self._drawn = n
        self._sent = {name: state.column(name)[:n].copy() for name in SYNCED}

    # ------------------------------------------------------------------ a streaming reply

    def token(self, index: int, position: int, token_id: int, turn: int, text: str) -> None:
        """A generated token, drawn by the pages from this message (its row comes with the next sync)."""
        self._broadcast(message("token", index=index, position=position, token_id=token_id, turn=turn, text=text))
        self._drawn = position + 1

    def due(self, position: int, arrived_ms: float, active: npt.NDArray[np.int64]) -> None:
        """The levels after the token at `position` (arrived at `arrived_ms`) are due: sent now,
        or, when the last update went out less than a display frame ago, at that frame's end."""
        self._due = (position, arrived_ms)
        loop = asyncio.get_running_loop()
        wait = self._levels_at + LEVELS_INTERVAL_S - loop.time()
        if wait <= 0:
            self._send_due(active)
        elif self._timer is None:
            self._timer = loop.call_later(wait, self._send_due)

    def _send_due(self, active: npt.NDArray[np.int64] | None = None) -> None:
        self._timer = None
        due, self._due = self._due, None
        chat = self._chat()
        # only once the pages have every token of the state (a timer fires between tokens)
        if due is None or chat is None or self._drawn != len(chat.state):
            return
        self._levels_at = asyncio.get_running_loop().time()
        self._broadcast(self.levels(newest=due[0], sent_ms=due[1], active=active))

    def cancel(self) -> float:
        """Drop a levels update still held for its display frame; returns the arrival time (ms)
        of the token it was for (0.0: none), so the update that stands in for it can carry it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = self._due[1] if self._due is not None else 0.0
        self._due = None
        return held
