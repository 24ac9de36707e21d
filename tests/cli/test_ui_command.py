"""`halo-client ui`: what a user sees when it cannot start (one line, exit code 2); a taken port
is tests/cli/test_workbench_command.py's, serving end to end tests/ui/test_browser.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from halo_client.cli import main


def test_a_bad_settings_file_stops_it_before_it_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"view": {"scale": "rainbow"}}')
    monkeypatch.setenv("HALO_CONFIG", str(path))
    result = CliRunner().invoke(main, ["ui", "--port", "0"])
    assert result.exit_code == 2 and "view.scale" in result.stderr


def test_an_out_of_range_port_is_refused_by_the_parser() -> None:
    result = CliRunner().invoke(main, ["ui", "--port", "99999"])
    assert result.exit_code == 2 and "99999" in result.stderr
