"""Saving and loading a whole conversation: tokens, scores, settings, audit trail.

Versioned JSON, written atomically: a temporary file in the same directory, flushed and
fsynced, then renamed over the old one, so a crash mid-write leaves the previous session
intact. Loading checks everything before building anything: a file of another version or a
damaged one raises `SessionError` and loads nothing.

Version 2 added memory: its settings and, per token, the turn at which memory last recalled it
(`recalled_turn`). A version-1 file loads as a chat that has never recalled anything, with
memory's default settings; it is written back as version 2.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from halo_client.atomic import write_atomic
from halo_client.conversation.memory import MemorySettings
from halo_client.conversation.pruner import PrunerSettings
from halo_client.conversation.state import COLUMNS, NOT_DELETED, ConversationError, ConversationState, Turn
from halo_client.conversation.tracker import TrackerSettings
from halo_client.errors import HaloError

FORMAT: Final = "halo-weave-session"
VERSION: Final = 3
#: versions this halo-client reads (older ones are migrated on load)
READABLE: Final = (1, 2, 3)


class SessionError(HaloError):
    """A session file cannot be loaded (another version, damaged, not a session)."""


class SessionModelMismatch(SessionError):
    """A session saved against another model: its token ids mean other text to this one."""


@dataclass
class Session:
    state: ConversationState
    tracker: TrackerSettings
    pruner: PrunerSettings
    #: free-form facts about the chat (model name, server URL, system prompt)
    meta: dict[str, Any]
    memory: MemorySettings = field(default_factory=MemorySettings)
    #: attention frames the tracker has applied over the chat's life (`/stats`)
    frames_tracked: int = 0

    def check_vocabulary(self, vocab_size: int, model_name: str, source: str = "session") -> None:
        """Refuse (`SessionError`) a session holding a token id outside the model's vocabulary:
        every request would fail, so nothing is loaded."""
        ids = self.state.column("token_id")
        bad = np.flatnonzero(ids >= vocab_size)
        if bad.size:
            p = int(bad[0])
            raise SessionError(f"{source} cannot be loaded: token {p} has id {int(ids[p])}, outside the "
                               f"{vocab_size:,}-token vocabulary of {model_name} ({bad.size} such tokens: "
                               "damaged, or saved with another model); nothing was loaded")


def to_json(session: Session) -> dict[str, Any]:
    state = session.state
    if state.turns and not state.turns[-1].complete:
        # a streaming reply's starting brightness and frame columns live outside the state
        raise SessionError("a reply is still streaming: save the session once it has ended")
    n = len(state)
    columns = {name: state.column(name).tolist() for name in COLUMNS}
    # NaN is not JSON: store the audit score as null where it has none
    columns["deleted_score"] = [None if np.isnan(v) else v for v in state.column("deleted_score").tolist()]
    return {
        "format": FORMAT,
        "version": VERSION,
        "tracker": session.tracker.model_dump(),
        "pruner": session.pruner.model_dump(),
        "memory": session.memory.model_dump(),
        "meta": session.meta,
        "frames_tracked": session.frames_tracked,
        "initial_brightness": state.initial_brightness,
        "next_ids": list(state.next_ids),
        "turns": [[t.turn_id, t.role, t.start, t.end, t.complete] for t in state.turns],
        "count": n,
        "pieces": [base64.b64encode(p).decode("ascii") for p in state.pieces],
        "columns": columns,
    }


def save(session: Session, path: str | os.PathLike[str]) -> None:
    write_atomic(path, json.dumps(to_json(session), separators=(",", ":"), allow_nan=False).encode())


def from_json(data: Any, source: str = "session") -> Session:
    def bad(why: str) -> SessionError:
        return SessionError(f"{source} cannot be loaded: {why}; nothing was loaded")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad("it is not a Halo Weave session file")
    version = data.get("version")
    if version not in READABLE:
        raise bad(f"it is version {version!r}, this halo-client reads versions {', '.join(map(str, READABLE))}")
    try:
        n = int(data["count"])
        pieces = [base64.b64decode(p, validate=True) for p in data["pieces"]]
        columns = data["columns"]
        if version == 1 and isinstance(columns, dict) and "recalled_turn" not in columns:
            columns = {**columns, "recalled_turn": [NOT_DELETED] * n}  # nothing was ever recalled
        if version < 3 and isinstance(columns, dict) and "deleted_ranked_by" not in columns:
            columns = {**columns, "deleted_ranked_by": [0] * n}  # brightness ranked every prune
        if len(pieces) != n or set(columns) != set(COLUMNS):
            raise bad("its token table is incomplete")
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, (dtype, _fill) in COLUMNS.items():
            values = columns[name]
            if len(values) != n:
                raise bad(f"column {name} has {len(values)} rows, expected {n}")
            if name == "deleted_score":
                values = [np.nan if v is None else v for v in values]
            arrays[name] = np.asarray(values, dtype=dtype)
        turns = [Turn(int(t), r, int(a), int(b), bool(c)) for t, r, a, b, c in data["turns"]]
        tracker = TrackerSettings.model_validate(data["tracker"])
        pruner = PrunerSettings.model_validate(data["pruner"])
        memory = MemorySettings.model_validate(data["memory"]) if version >= 2 else MemorySettings()
        next_sentence, next_line = (int(v) for v in data["next_ids"])
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise bad("its meta is not an object")
        initial_brightness = float(data["initial_brightness"])
        frames_tracked = int(data.get("frames_tracked", 0))  # (files before it was saved: 0)
        if frames_tracked < 0:
            raise bad("its count of tracked frames is negative")
        state = ConversationState.from_arrays(arrays, pieces, turns, (next_sentence, next_line), initial_brightness)
    except SessionError:
        raise
    except ConversationError as exc:
        raise bad(str(exc)) from exc
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # pydantic's errors are ValueErrors
        raise bad(f"it is damaged ({type(exc).__name__}: {exc})") from exc
    return Session(state, tracker, pruner, dict(meta), memory, frames_tracked)


def load(path: str | os.PathLike[str]) -> Session:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SessionError(f"{path} cannot be read: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SessionError(
            f"{path} cannot be loaded: it is not valid JSON (damaged?); nothing was loaded") from exc
    return from_json(data, str(path))
