"""`make workbench` (`halo-client workbench`) and `halo-client ui` on taken ports: each falls back
to a free one and says which, as `make demo` does (issue 21, item 14)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from halo_client.reference.tiny_model import write_tiny_llama

pytestmark = pytest.mark.process

CLI = [sys.executable, "-m", "halo_client.cli"]


def taken_port(stack: list[socket.socket]) -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stack.append(sock)
    return int(sock.getsockname()[1])


def wait_for_line(proc: subprocess.Popen[bytes], pattern: str, timeout: float = 90) -> tuple[re.Match[str], str]:
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = proc.stderr.read()
        if chunk:
            seen += chunk.decode()
            found = re.search(pattern, seen)
            if found:
                return found, seen
        elif proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r}: {seen}")


def test_make_workbench_on_taken_ports_serves_on_free_ones(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=1024)
    held: list[socket.socket] = []
    try:
        model_port, ui_port = taken_port(held), taken_port(held)
        proc = subprocess.Popen([*CLI, "workbench", "--model", str(model), "--port", str(model_port), "--context",
                                 "1024", "--ui-port", str(ui_port), "--sessions", str(tmp_path / "sessions")],
                                stderr=subprocess.PIPE,
                                env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})
        try:
            found, seen = wait_for_line(proc, r"workbench on (http://127\.0\.0\.1:(\d+)/)")
            assert f"port {model_port} is taken; the model server uses" in seen
            assert f"port {ui_port} is taken; the workbench uses" in seen
            url, port = found.group(1), int(found.group(2))
            assert port != ui_port
            with urllib.request.urlopen(url, timeout=10) as page:
                assert page.status == 200 and b"<html" in page.read().lower()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        assert proc.returncode == 0
    finally:
        for sock in held:
            sock.close()


def test_make_workbench_says_ui_port_and_runs_the_one_command() -> None:
    root = Path(__file__).resolve().parents[2]
    dry = subprocess.run(["make", "-n", "workbench", "UI_PORT=8899", "PORT=5099", "VENV=.venv"], cwd=root,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "halo-client workbench --port 5099 --ui-port 8899 --open" in dry.stdout
    assert "UI_PORT" in (root / "README.md").read_text()
