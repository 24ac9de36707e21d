"""Where the workbench keeps sessions: one directory of session files, and an autosave per model.

The page names a session; it never gives a path, so a page can only ever read and write
`*.json` files in this directory. The directory is `--sessions DIR`, by default
`$XDG_DATA_HOME/halo-weave/sessions` (`~/.local/share/halo-weave/sessions`). The autosave is
kept per model (`autosave/<model>.json`): token ids belong to one model, so switching servers
never overwrites the other model's chat. Every write goes through `session.save` (atomic).

A session saved with another model is refused (`ModelMismatch`) unless the user forces it:
the same ids mean other tokens in another vocabulary.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Final

from halo_client.atomic import write_atomic
from halo_client.conversation.session import Session, SessionError, SessionModelMismatch, from_json, load, save

_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,79}$")


class ModelMismatch(SessionModelMismatch):
    """The session was saved with another model than the server runs; says which two."""

    def __init__(self, source: str, saved: str, running: str) -> None:
        self.saved = saved
        self.running = running
        super().__init__(f"{source} was saved with model {saved!r}, but the server runs {running!r}: its token "
                         "ids mean other text in this model's vocabulary",
                         "Open it anyway only if the two models share a tokenizer.")


def default_directory() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "halo-weave" / "sessions"


def check_model(session: Session, model_name: str, source: str, *, force: bool = False) -> None:
    """Refuse a session saved with another model (`ModelMismatch`), unless `force`. A session
    that does not say its model (written by hand or by an old client) is accepted."""
    saved = session.meta.get("model_name")
    if not force and isinstance(saved, str) and saved != model_name:
        raise ModelMismatch(source, saved, model_name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


class SessionStore:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_directory()

    def path(self, name: str) -> Path:
        """The file of session `name` (letters, digits, space, `_ . -`; no path)."""
        name = name.strip().removesuffix(".json")
        if not _NAME.match(name) or ".." in name:
            raise SessionError(f"{name!r} is not a session name",
                               "Use letters, digits, spaces, '_', '.' and '-' (up to 80 characters).")
        return self.directory / f"{name}.json"

    def autosave_path(self, model_name: str) -> Path:
        return self.directory / "autosave" / f"{_slug(model_name)}.json"

    def names(self) -> list[dict[str, Any]]:
        """The saved sessions, newest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob("*.json"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append({"name": path.stem, "modified": stat.st_mtime, "bytes": stat.st_size})
        return sorted(found, key=lambda item: -float(item["modified"]))

    def save(self, session: Session, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionError(f"cannot create {path.parent}: {exc.strerror}") from exc
        try:
            save(session, path)
        except OSError as exc:
            raise SessionError(f"cannot write {path}: {exc.strerror}; the previous file is unchanged") from exc

    def write(self, data: dict[str, Any], path: Path) -> None:
        """A session already encoded (`session.to_json`): for writing off the event loop."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(data, separators=(",", ":"), allow_nan=False).encode())
        except OSError as exc:
            raise SessionError(f"cannot write {path}: {exc.strerror}; the previous file is unchanged") from exc

    def load(self, path: Path, model_name: str, *, force: bool = False) -> Session:
        session = load(path)
        check_model(session, model_name, path.name, force=force)
        return session

    @staticmethod
    def parse(data: dict[str, Any], source: str, model_name: str, *, force: bool = False) -> Session:
        """A session the page uploaded (its JSON), checked like a file."""
        session = from_json(data, source)
        check_model(session, model_name, source, force=force)
        return session
