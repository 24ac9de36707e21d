"""Servers that tests and benchmarks start as processes of their own."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Ask `proc` to exit (SIGTERM: servers shut down cleanly on it), and kill it if it has not
    after `timeout` s, so a hung server never outlives the test that started it."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
