"""The settings file as the command line's defaults: flags win, then the file, then each
option's own default; a bad file is one line and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from halo_client import config
from halo_client.cli import main
from halo_client.cli.defaults import default_map
from halo_client.cli.options import sampler_from, settings_from
from halo_client.config import META_KEY, Config
from halo_client.conversation.tracker import TrackerSettings
from halo_client.testing import MockKoboldServer
from halo_client.testing.threaded import ServerThread


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with ServerThread(MockKoboldServer) as thread:
        yield thread.url


def test_only_what_the_file_sets_is_mapped() -> None:
    assert default_map(Config()) == {}
    chosen = Config().merged({"tracker": {"decay": 0.2}, "sampler": {"max_length": 7, "sampler_seed": 3},
                              "system_prompt": "Be brief.", "pruner": {"max_context_tokens": 500},
                              "view": {"scale": "log"}})
    mapped = default_map(chosen)
    assert mapped["chat"] == {"decay": 0.2, "max_length": 7, "system": "Be brief.", "max_context_tokens": 500,
                              "scale": "log"}
    assert mapped["demo"] == mapped["chat"]
    assert mapped["generate"] == {"decay": 0.2, "max_length": 7, "seed": 3, "max_context_tokens": 500}


def test_every_mapped_option_is_an_option_of_its_command() -> None:
    everything = Config().merged({"tracker": {"decay": 0.2, "min_distance": 3, "distance_scale": 5.0, "boost": 2.0,
                                              "aggregation": "max", "distance_mode": "linear",
                                              "accumulation": "none"},
                                  "pruner": {"max_context_tokens": 9, "granularity": "line", "protect_exchanges": 2,
                                             "recent_share": 0.5},
                                  "sampler": {"max_length": 7, "temperature": 0.1, "sampler_seed": 1},
                                  "memory": {"enabled": False},
                                  "system_prompt": "x", "view": {"scale": "log"}})
    for command, options in default_map(everything).items():
        names = {p.name for p in main.commands[command].params}
        assert set(options) <= names, (command, set(options) - names)


def test_generate_takes_its_defaults_from_the_file_and_flags_win(
        mock_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    monkeypatch.setenv("HALO_CONFIG", str(path))
    config.save(Config().merged({"sampler": {"max_length": 4, "temperature": 0.0}}), path)
    runner = CliRunner()
    result = runner.invoke(main, ["--url", mock_url, "generate", "hello"])
    assert result.exit_code == 0, result.output
    assert "[length: 4 tokens" in result.stderr
    result = runner.invoke(main, ["--url", mock_url, "generate", "hello", "--max-length", "6"])
    assert "[length: 6 tokens" in result.stderr
    shown = runner.invoke(main, ["generate", "--help"]).output
    assert "[default: 4;" in shown  # (the range follows the default)


def test_a_bad_settings_file_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"tracker": {"decay": -1}}')
    monkeypatch.setenv("HALO_CONFIG", str(path))
    result = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "info"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "tracker.decay" in result.stderr and str(path) in result.stderr


def test_settings_without_a_flag_come_from_the_file_and_flags_still_win() -> None:
    chosen = Config().merged({"tracker": {"initial_brightness": 3.0, "decay": 0.2}, "pruner": {"reduce": "mean"},
                              "sampler": {"top_p": 0.5, "temperature": 0.2}})
    flags = {"aggregation": "max", "distance_mode": "logarithmic", "min_distance": 0, "distance_scale": 10.0,
             "accumulation": "additive", "decay": 0.0, "boost": 1.0, "max_context_tokens": 0,
             "granularity": "sentence", "protect_exchanges": 1, "recent_share": 0.5}
    ctx = click.Context(main)
    ctx.meta[META_KEY] = chosen
    with ctx:
        tracker, pruner = settings_from(dict(flags))
        sampler = sampler_from(temperature=0.9)
    assert (tracker.initial_brightness, tracker.decay, tracker.aggregation) == (3.0, 0.0, "max")
    assert (pruner.reduce, pruner.recent_share) == ("mean", 0.5)
    assert sampler["top_p"] == 0.5 and sampler["temperature"] == 0.9 and "max_length" not in sampler
    tracker, _ = settings_from(dict(flags))  # outside a command: the defaults
    assert tracker.initial_brightness == TrackerSettings().initial_brightness


# ------------------------------------------------- memory and pruning: the benchmark's choice (issue 19)


def test_the_settings_file_starts_from_the_benchmarks_choice(tmp_path: Path) -> None:
    from halo_client.conversation.memory import MemorySettings

    chosen = MemorySettings(enabled=True, scorer="meaning", max_recalled=5, min_similarity=0.30)
    assert Config().memory == chosen and Config().pruner.score == "question"
    path = tmp_path / "settings.json"
    path.write_text("{}")  # a settings file that sets nothing
    loaded = config.load(path)
    assert loaded.memory == chosen and loaded.pruner.score == "question"


def test_chat_prunes_by_the_question_and_recalls_by_meaning_unless_the_file_says_otherwise(
        mock_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from halo_client.conversation.memory import MemorySettings

    def chat_session(name: str) -> dict[str, object]:
        session = tmp_path / name
        result = CliRunner().invoke(main, ["--url", mock_url, "chat", "--temperature", "0", "--max-length", "4",
                                           "--session", str(session)], input="hello\n/quit\n")
        assert result.exit_code == 0, result.output
        saved: dict[str, object] = json.loads(session.read_text())
        return saved

    monkeypatch.setenv("HALO_CONFIG", str(tmp_path / "none.json"))  # no settings file
    saved = chat_session("a.json")
    assert saved["memory"] == MemorySettings().model_dump()
    assert saved["memory"] == {**saved["memory"], "scorer": "meaning", "min_similarity": 0.30, "max_recalled": 5}
    assert isinstance(saved["pruner"], dict) and saved["pruner"]["score"] == "question"
    path = tmp_path / "settings.json"
    config.save(Config().merged({"memory": {"scorer": "words", "min_relevance": 1.5},
                                 "pruner": {"score": "brightness"}}), path)
    monkeypatch.setenv("HALO_CONFIG", str(path))
    saved = chat_session("b.json")
    assert isinstance(saved["memory"], dict) and isinstance(saved["pruner"], dict)
    assert (saved["memory"]["scorer"], saved["memory"]["min_relevance"]) == ("words", 1.5)
    assert saved["pruner"]["score"] == "brightness"
