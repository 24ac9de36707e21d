"""The settings file: where it is, what it may hold (the CLI's own models and ranges), and that
a bad one is refused whole and never overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from halo_client import config
from halo_client.config import Config, ConfigError, SamplerSettings
from halo_client.messages import GenerateRequest


def test_the_path_follows_halo_config_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HALO_CONFIG", str(tmp_path / "mine.json"))
    assert config.config_path() == tmp_path / "mine.json"
    monkeypatch.delenv("HALO_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.config_path() == tmp_path / "xdg" / "halo-weave" / "settings.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config.config_path() == Path.home() / ".config" / "halo-weave" / "settings.json"


def test_no_file_is_the_defaults_and_a_saved_file_holds_only_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "settings.json"
    assert config.load(path) == Config()
    chosen = Config().merged({"tracker": {"decay": 0.01}, "sampler": {"temperature": 0.0}, "view": {"scale": "log"}})
    config.save(chosen, path)
    assert json.loads(path.read_text()) == {"sampler": {"temperature": 0.0}, "tracker": {"decay": 0.01},
                                            "view": {"scale": "log"}}
    assert config.load(path) == chosen
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temporary file left


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "not valid JSON"),
    ('{"tracker": {"decay": 2}}', "tracker.decay: Input should be less than or equal to 1"),
    ('{"pruner": {"max_context_tokens": -5}}', "pruner.max_context_tokens"),
    ('{"sampler": {"top_p": 0}}', "sampler.top_p"),
    ('{"sampler": {"temperature": "hot"}}', "sampler.temperature"),
    ('{"colour": "red"}', "colour: Extra inputs are not permitted"),
])
def test_a_bad_file_is_a_config_error_naming_the_field(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as error:
        config.load(path)
    assert str(path) in str(error.value) and "left as it is" in str(error.value)
    assert path.read_text() == content


def test_a_crash_mid_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    config.save(Config().merged({"tracker": {"decay": 0.5}}), path)

    def crash(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(ConfigError, match="cannot be written: No space left"):
        config.save(Config().merged({"tracker": {"decay": 0.7}}), path)
    assert config.load(path).tracker.decay == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_sampler_ranges_are_the_contracts() -> None:
    for name, field in SamplerSettings.model_fields.items():
        contract = GenerateRequest.model_fields[name]
        assert field.metadata == contract.metadata, name
        assert field.annotation == contract.annotation, name
    assert set(SamplerSettings().request_fields()) < set(GenerateRequest.model_fields)
