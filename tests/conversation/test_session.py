"""Sessions: exact round trip, atomic writes, clear refusals that load nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from halo_client.conversation.memory import Memory, MemorySettings
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.session import Session, SessionError, load, save, to_json
from halo_client.conversation.tracker import TrackerSettings
from tests.conversation.test_pruner import build


def session() -> Session:
    state = build([("system", "Be brief."), ("user", "One. Two 😀. Three!"), ("assistant", "Four? Five.")],
                  reply="Six.")
    state.end_reply([])
    state.brightness[:] = np.linspace(0, 3, len(state), dtype=np.float32)
    Pruner().prune(state, len(state) - 3)
    return Session(state, TrackerSettings(decay=0.01), PrunerSettings(max_context_tokens=99), {"model_name": "m"},
                   MemorySettings(max_recalled=1))


def test_round_trip_is_identical(tmp_path: Path) -> None:
    original = session()
    save(original, tmp_path / "s.json")
    loaded = load(tmp_path / "s.json")
    assert to_json(loaded) == to_json(original)
    assert list(loaded.state.rows()) == list(original.state.rows())
    a, b = original.state, loaded.state
    for name in ("token_id", "brightness", "deleted", "deleted_turn", "sentence", "template"):
        np.testing.assert_array_equal(a.column(name), b.column(name))
    assert a.pieces == b.pieces and a.input_ids() == b.input_ids()
    assert loaded.tracker == original.tracker and loaded.pruner == original.pruner
    assert loaded.memory == original.memory


def test_recalls_are_saved_with_the_rest(tmp_path: Path) -> None:
    original = session()
    state = original.state
    Pruner(PrunerSettings(protect_exchanges=0)).prune(state, state.active_count - 12)
    pruned = [e for e in Pruner().pruned_units(state) if "Two" in e.text or "Three" in e.text]
    assert pruned, "the session has something pruned to recall"
    recalled = Memory(MemorySettings(max_recalled=1, keep_in_context=0)).recall(state, Pruner(), pruned[0].text)
    assert [r.event.positions for r in recalled] == [pruned[0].positions]
    save(original, tmp_path / "s.json")
    loaded = load(tmp_path / "s.json").state
    turn = len(state.turns) - 1
    assert [loaded.row(p).recalled_turn for p in pruned[0].positions] == [turn] * len(pruned[0].positions)
    assert not loaded.column("deleted")[list(pruned[0].positions)].any()


def test_a_version_1_file_loads_as_never_recalled(tmp_path: Path) -> None:
    data = to_json(session())
    del data["memory"], data["columns"]["recalled_turn"]
    data["version"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    loaded = load(path)
    assert loaded.memory == MemorySettings()
    assert (loaded.state.column("recalled_turn") == -1).all()
    save(loaded, path)
    assert json.loads(path.read_text())["version"] == 3


def test_what_ranked_a_prune_is_saved_and_older_files_read_as_brightness(tmp_path: Path) -> None:
    original = session()
    state = original.state
    scores = np.arange(len(state), dtype=np.float64)
    events = Pruner(PrunerSettings(protect_exchanges=0)).prune(state, state.active_count - 12, scores=scores,
                                                               ranked_by="question").events
    assert events and {e.ranked_by for e in events} == {"question"}
    save(original, tmp_path / "s.json")
    assert {e.ranked_by for e in Pruner().pruned_units(load(tmp_path / "s.json").state)} == {"question"}
    data = to_json(original)
    del data["columns"]["deleted_ranked_by"]
    data["version"] = 2
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert {e.ranked_by for e in Pruner().pruned_units(load(tmp_path / "old.json").state)} == {"brightness"}


def test_a_crash_mid_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    save(session(), path)
    before = path.read_bytes()

    def crash(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save(session(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.update(version=4), "version 4, this halo-client reads versions 1, 2, 3"),
        (lambda d: d["columns"]["deleted_ranked_by"].__setitem__(0, 7), "unknown ranking"),
        (lambda d: d["memory"].update(max_recalled=-1), "damaged"),
        (lambda d: d["columns"]["recalled_turn"].__setitem__(0, 99), "recall at a turn"),
        (lambda d: d.update(format="other"), "not a Halo Weave session"),
        (lambda d: d["columns"]["brightness"].pop(), "column brightness"),
        (lambda d: d["pieces"].__setitem__(0, "!!"), "damaged"),
        (lambda d: d["tracker"].update(decay="lots"), "damaged"),
        (lambda d: d["turns"].append([9, "user", 0, 10**6, True]), "turns"),
        (lambda d: d["turns"].pop(), "turns do not tile"),
        (lambda d: d["turns"][-1].__setitem__(4, False), "never ended"),
        (lambda d: d["columns"]["role"].__setitem__(0, 2), "roles disagree"),
        (lambda d: d["columns"]["turn"].__setitem__(0, 1), "turns disagree"),
        (lambda d: d["columns"]["deleted_reason"].__setitem__(0, 9), "unknown reason"),
        (lambda d: d["columns"]["deleted"].__setitem__(0, True), "audit trail"),
        (lambda d: d["columns"]["token_id"].__setitem__(0, -3), "negative token id"),
        (lambda d: d["columns"]["sentence"].__setitem__(-1, 10**6), "next ids"),
        (lambda d: d.update(meta=[[1, 2]]), "meta"),
        (lambda d: d["columns"]["brightness"].__setitem__(0, [1.0]), "damaged|not a list"),
        (lambda d: d["columns"]["pinned"].__setitem__(slice(None), [[False]] * len(d["columns"]["pinned"])),
         "not a list|shape"),
        (lambda d: d.update(initial_brightness=float("nan")), "initial brightness"),
        (lambda d: d.pop("columns"), "damaged"),
    ],
)
def test_bad_files_load_nothing(tmp_path: Path, mutate: object, words: str) -> None:
    data = to_json(session())
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SessionError, match=words):
        load(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    save(session(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SessionError, match="not valid JSON"):
        load(path)


def test_a_streaming_reply_is_not_saved(tmp_path: Path) -> None:
    state = build([("system", "S."), ("user", "Q.")], reply="Half a rep")
    with pytest.raises(SessionError, match="streaming"):
        save(Session(state, TrackerSettings(), PrunerSettings(), {}), tmp_path / "s.json")
    assert not list(tmp_path.iterdir())


def test_a_damaged_file_leaves_a_loaded_session_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    save(session(), path)
    good = load(path)
    path.write_text("{}")
    with pytest.raises(SessionError, match="nothing was loaded"):
        load(path)
    assert good.state.input_ids() == session().state.input_ids()
