"""`halo-client serve --engine llama.cpp` as a user runs it: a real process on a real port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from halo_client.reference.tiny_model import write_tiny_llama
from halo_client.testing.ports import free_port, wait_for_port

pytestmark = pytest.mark.process

CLI = [sys.executable, "-m", "halo_client.cli"]


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "HALO_LLAMA_LIB"}, **extra}


def test_a_missing_library_is_one_line_and_exit_2(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    done = subprocess.run([*CLI, "serve", "--engine", "llama.cpp", "--model", str(model), "--port", "0"],
                          capture_output=True, text=True, timeout=60, env=_env(HALO_LLAMA_LIB=str(tmp_path / "no.so")))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"halo-client: No Halo Weave libllama at {tmp_path / 'no.so'}")
    assert "make patch-and-build HOST=llama.cpp" in lines[0]


def test_serve_runs_the_engine_with_its_options(llama_lib: Path, tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--engine", "llama.cpp", "--model", str(model), "--port", str(port),
                             "--ctx-size", "512", "--threads", "1", "--attention-export", "f32kv"],
                            stderr=subprocess.PIPE, text=True, env=_env(HALO_LLAMA_LIB=str(llama_lib)))
    try:
        wait_for_port(port, timeout=120)
        info = httpx.get(f"http://127.0.0.1:{port}/api/v1/model/info", timeout=120).json()
        assert (info["architecture"], info["max_context_length"]) == ("llama", 512)
        assert info["attention"]["available"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving tiny on llama.cpp (2 layers x 4 heads, context 512)" in err
