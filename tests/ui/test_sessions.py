"""The session directory: names, never paths; an autosave per model; other models refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from halo_client.conversation.pruner import PrunerSettings
from halo_client.conversation.session import Session, SessionError
from halo_client.conversation.state import ConversationState
from halo_client.conversation.tracker import TrackerSettings
from halo_client.ui.sessions import ModelMismatch, SessionStore, check_model, default_directory


def session(model: str | None) -> Session:
    state = ConversationState()
    state.add_message("user", [(5, b"Hi")])
    return Session(state, TrackerSettings(), PrunerSettings(), {} if model is None else {"model_name": model})


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 81, "a\nb"])
def test_a_name_is_never_a_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(SessionError, match="not a session name"):
        SessionStore(tmp_path).path(name)


def test_names_list_and_autosave_per_model(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s")
    assert store.names() == []
    store.save(session("m"), store.path("my chat.json"))
    assert [s["name"] for s in store.names()] == ["my chat"]
    assert store.autosave_path("halo/mock:7b") == tmp_path / "s" / "autosave" / "halo_mock_7b.json"
    assert store.autosave_path("a") != store.autosave_path("b")
    loaded = store.load(store.path("my chat"), "m")
    assert loaded.state.input_ids() == [5]


def test_another_models_session_is_refused_unless_forced() -> None:
    with pytest.raises(ModelMismatch, match=r"'other'.*'mine'"):
        check_model(session("other"), "mine", "s.json")
    check_model(session("other"), "mine", "s.json", force=True)
    check_model(session(None), "mine", "s.json")  # a session that does not say is accepted


def test_the_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "halo-weave" / "sessions"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_directory() == Path.home() / ".local" / "share" / "halo-weave" / "sessions"


def test_an_unwritable_directory_is_a_session_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = SessionStore(blocker / "sessions")
    with pytest.raises(SessionError, match="cannot create"):
        store.save(session("m"), store.path("x"))
