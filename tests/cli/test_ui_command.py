"""`halo-client ui`: what a user sees when it cannot start (one line, exit code 2); serving is
covered end to end by tests/ui/test_browser.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from halo_client.cli import main


def test_a_taken_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "ui", "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "another --port" in result.stderr


def test_a_bad_settings_file_stops_it_before_it_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"view": {"scale": "rainbow"}}')
    monkeypatch.setenv("HALO_CONFIG", str(path))
    result = CliRunner().invoke(main, ["ui", "--port", "0"])
    assert result.exit_code == 2 and "view.scale" in result.stderr


def test_an_out_of_range_port_is_refused_by_the_parser() -> None:
    result = CliRunner().invoke(main, ["ui", "--port", "99999"])
    assert result.exit_code == 2 and "99999" in result.stderr
