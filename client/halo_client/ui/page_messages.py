"""The JSON messages the UI server sends the page, built from the chat (protocol.py has the
commands the page sends and the binary `levels` update).

Every message is one object with a `type`; these functions build their parts from a `Chat`
without changing it. Fields are only ever added, so an older page ignores what it does not know.

What a message says about the user's message and the budget:

- `error` with `command: "send"` says what became of the message in `outcome`: `refused` (kind
  `too_long`, with `tokens` and `max_tokens`, also as `most`: its size and the most it may have)
  or `undone` (kind `busy`, `unreachable`, `unauthorized` or `error`): the message was not sent
  and nothing changed, `text` is the message (for the input box); or `interrupted` (kind
  `interrupted`, with `turn`): the server cut the reply short, the message and what the reply
  wrote stay (the input box stays empty).
- `reply_done`: `finish_reason` (`interrupted` for a reply cut short, with `interrupted` saying
  why), `turn` (the reply's), `budget`.
- `budget` (in `snapshot`, `rows`, `reply_done` and `settings`): `active`, `budget`, `context`,
  `over` and, while over, `message`; an over-budget warning holds while `over` is true.
- `rows.events[]`: `tokens` (the unit's own) and `freed` (with the template that went with it);
  `rows.summary`: one line for a prune of more than `LISTED_ONE_BY_ONE` units, else null.
- `snapshot.interrupted_turns`: the replies a failure cut short, kept with the session.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt

from halo_client.config import Config
from halo_client.conversation.chat import Chat
from halo_client.conversation.pruner import LISTED_ONE_BY_ONE, RANKING_LABELS, PruneEvent, summary
from halo_client.conversation.state import ConversationState
from halo_client.display.scale import ScaleMode, conversation_levels
from halo_client.errors import RequestTimeout, ServerBusy, ServerUnreachable, Unauthorized
from halo_client.messages import ModelInfo
from halo_client.ui import protocol


def message(message_type: str, /, **fields: Any) -> str:
    return json.dumps({"type": message_type, **fields}, separators=(",", ":"), allow_nan=False)


def kind_of(error: BaseException) -> str:
    """The page's banner for an error: busy, unauthorized, unreachable, or a plain error."""
    if isinstance(error, ServerBusy):
        return "busy"
    if isinstance(error, Unauthorized):
        return "unauthorized"
    if isinstance(error, ServerUnreachable | RequestTimeout):
        return "unreachable"
    return "error"


def finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def event_json(event: PruneEvent, reason: str | None = None) -> dict[str, Any]:
    """One prune or restore for the page's activity log, with why where it is not the pruner's
    budget (e.g. a restore "recalled" by memory); the page shows the reason as it comes.
    `tokens` counts the unit's own tokens; `freed` also the template that went with it."""
    return {"action": "restored" if event.restored else "pruned", "reason": reason,
            "kind": event.kind, "unit": event.unit, "turn": event.turn, "positions": list(event.positions),
            "score": finite(event.score), "ranked_by": RANKING_LABELS[event.ranked_by], "tokens": event.size,
            "freed": abs(event.tokens_freed), "text": event.text}


def prune_summary(events: list[PruneEvent]) -> str | None:
    """One line for a prune of many units (the page logs it instead of a line per unit), else None."""
    pruned = [e for e in events if not e.restored]
    if len(pruned) <= LISTED_ONE_BY_ONE:
        return None
    return f"pruned {summary(pruned)}: the Pruned list has each"


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


def pruned_json(chat: Chat) -> list[dict[str, Any]]:
    """The units pruned now, newest first, as the Pruned list shows them."""
    units = chat.pruner.pruned_units(chat.state)
    return [{"positions": list(u.positions), "kind": u.kind, "unit": u.unit, "turn": u.turn,
             "score": finite(u.score), "ranked_by": RANKING_LABELS[u.ranked_by], "text": u.text, "tokens": u.size}
            for u in reversed(units)]


def legend_json(chat: Chat, mode: ScaleMode) -> dict[str, Any]:
    active = chat.state.active_positions()
    _levels, scale = conversation_levels(chat.state, active, mode)
    return {"text": scale.legend(), "mode": scale.mode, "low": scale.low, "high": scale.high, "count": scale.count}


def budget_json(chat: Chat) -> dict[str, Any]:
    """Where the chat stands against its budget now: the page's over-budget warning is up while
    `over` is true and goes when it is false."""
    status = chat.budget_status()
    return {"active": status.active, "budget": status.budget, "context": status.context, "over": status.over,
            "message": status.message}


def model_json(info: ModelInfo | None, chat: Chat | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"name": info.model_name, "layers": info.num_layers, "heads": info.num_attention_heads,
            "kv_heads": info.num_key_value_heads, "context": info.max_context_length,
            "attention": info.attention.available, "attention_reason": info.attention.reason,
            "layouts": list(info.attention.layouts),
            "frame_layout": chat.frame_layout if chat is not None else None}


def settings_json(config: Config, chat: Chat | None) -> dict[str, Any]:
    """The settings file's values, with the chat's own tracker, pruner and memory (a session
    keeps those it was saved with)."""
    data = config.model_dump()
    if chat is not None:
        data["tracker"] = chat.tracker.settings.model_dump()
        data["pruner"] = chat.pruner.settings.model_dump()
        data["memory"] = chat.memory.settings.model_dump()
    return data


