"""`halo-client` as a user runs it: real processes, a real mock server on a real port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.process

CLI = [sys.executable, "-m", "halo_client.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([*CLI, "mock-server", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("mock server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HALO_URL", "HALO_PASSWORD")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin, timeout=60, env=env)


def test_generate_saves_frames_that_obey_the_contract(mock_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    result = run("--url", mock_url, "generate", "hello", "--attention-out", str(out), "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(("Sure.", "Hello!", "Yes."))  # a mock reply
    assert "<|im_end|>" not in result.stdout  # the stopping token is not printed
    info = run("--url", mock_url, "info").stdout
    layers = int(next(line.split()[1] for line in info.splitlines() if line.startswith("num_layers")))
    heads = int(next(line.split()[1] for line in info.splitlines() if line.startswith("num_attention_heads")))
    with np.load(out, allow_pickle=True) as saved:
        input_ids, token_ids = saved["input_ids"], saved["token_ids"]
        frames = sorted(k for k in saved.files if k.startswith("frame_"))
        assert len(frames) == len(token_ids) > 0  # one frame per token, the stopping one included
        for i, key in enumerate(frames):
            frame = saved[key]
            assert frame.shape == (layers, heads, len(input_ids) + i)
            np.testing.assert_allclose(frame.sum(axis=-1), 1.0, atol=1e-3)
    assert not (tmp_path / "out.npz.tmp").exists()


def test_unreachable_server_is_one_line_and_exit_2() -> None:
    port = free_port()
    result = run("--url", f"http://127.0.0.1:{port}", "info")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "halo-client serve" in lines[0]
    assert "Traceback" not in result.stderr


def test_tokenize_and_info(mock_url: str) -> None:
    result = run("--url", mock_url, "tokenize", "hi 😀")
    assert result.returncode == 0 and "tokens" in result.stdout
    assert "halo-mock" in run("--url", mock_url, "info").stdout


def test_scripted_chat_reads_one_message_per_line(mock_url: str) -> None:
    result = run("--url", mock_url, "chat", "--temperature", "0", stdin="hello\nand again\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model>") == 2


def test_chat_session_is_saved_and_resumed(mock_url: str, tmp_path: Path) -> None:
    session = tmp_path / "chat.json"
    first = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
                "--max-context-tokens", "400", stdin="hello\n")
    assert first.returncode == 0, first.stderr
    saved = session.read_bytes()
    second = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session), stdin="again\n/stats\n")
    assert second.returncode == 0, second.stderr
    assert "turns            5" in second.stdout  # system, hello, reply, again, reply
    assert session.read_bytes() != saved


def test_chat_commands_prune_and_restore(mock_url: str, tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    script = f"one. two. three.\nfour. five.\n/prune\n/restore\n/restore 99\n/save\n/save {target}\n/quit\n"
    result = run("--url", mock_url, "chat", "--temperature", "0", "--max-context-tokens", "150", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "pruned sentence" in result.stderr
    assert "restored:" in result.stderr
    assert "/restore takes 0.." in result.stderr or "nothing is pruned" in result.stderr
    assert "/save FILE" in result.stderr and target.exists()


def test_env_url_is_used(mock_url: str) -> None:
    env = {**os.environ, "HALO_URL": mock_url}
    result = subprocess.run([*CLI, "info"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and "halo-mock" in result.stdout
