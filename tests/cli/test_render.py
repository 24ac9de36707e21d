"""What the command line draws, without a terminal: the heat view, the legend, reports, progress."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from halo_client.cli.render import heat_colour, level_histogram, prune_report, render_conversation, stats_lines
from halo_client.conversation.pruner import PruneEvent, PruneResult
from halo_client.conversation.state import ConversationState
from halo_client.reference import _Progress

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _locker_chat() -> ConversationState:
    state = ConversationState()
    prefix = [(1, b"<|im_start|>"), (7, b"user\n")]
    words = [(10, b"My"), (11, b" locker"), (12, b" code"), (13, b" is"), (14, b" 4817"), (15, b"."),
             (16, b" What"), (17, b" is"), (18, b" my"), (19, b" locker"), (20, b" code"), (21, b"?")]
    state.add_message("user", words, prefix, [(2, b"<|im_end|>")])
    state.brightness[:] = 1.0
    state.brightness[0] = 300.0  # the sink
    state.brightness[2 + 4] = 3.0  # "4817", the answer the model keeps looking at
    return state


def test_the_answer_stands_out_and_the_template_is_hidden() -> None:
    lines = render_conversation(_locker_chat())
    view = lines[0]
    assert ANSI.sub("", view) == "you: My locker code is 4817. What is my locker code?"
    assert "<|im_start|>" not in view
    colours = re.findall(r"\x1b\[48;2;(\d+);(\d+);(\d+)m([^\x1b]*)", view)
    answer = next(c for c in colours if "4817" in c[3])
    filler = next(c for c in colours if "locker" in c[3])
    assert answer[:3] != filler[:3]  # no longer the same colour as the filler
    assert "percentile among 12 content tokens" in ANSI.sub("", lines[-1])
    assert "<|im_start|>" in ANSI.sub("", "".join(render_conversation(_locker_chat(), show_template=True)))


def test_levels_spread_over_the_content() -> None:
    rng = np.random.default_rng(3)
    state = ConversationState()
    state.add_message("user", [(10 + i, b" w") for i in range(200)], [(1, b"<|im_start|>")], [(2, b"<|im_end|>")])
    state.brightness[:] = rng.lognormal(0, 1, len(state)).astype(np.float32)
    state.brightness[0] = 1e4
    histogram = level_histogram(state)
    assert sum(histogram) == 200 and min(histogram) >= 30  # every fifth of the scale is used


def test_colours_run_from_dark_to_bright() -> None:
    assert sum(heat_colour(0.0)) < sum(heat_colour(0.5)) < sum(heat_colour(1.0))
    assert heat_colour(-1) == heat_colour(0) and heat_colour(2) == heat_colour(1)


def test_prune_reports_never_show_nan() -> None:
    result = PruneResult(events=[PruneEvent("sentence", 12, 3, (5, 6), 0.4213, 2, "What do octopuses eat?"),
                                 PruneEvent("turn", 3, 3, (1, 2), math.nan, 2, "<|im_start|>user\n")])
    lines = [ANSI.sub("", line) for line in prune_report(result)]
    assert lines == ["  pruned sentence 12 (brightness 0.42, 2 tokens): What do octopuses eat?"]


def test_stats_are_for_people() -> None:
    lines = stats_lines({"turns": 3, "tokens": 1234, "active": 1000, "pruned": 234, "budget": 1500,
                         "brightness_mean": 4.38527250289917, "frames_tracked": 40})
    assert "1,234" in lines[0] and "4.39" in lines[1] and "4.3852" not in "".join(lines)


@pytest.mark.parametrize("tty", [False, True])
def test_load_progress_is_plain_lines_off_a_terminal(tty: bool, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    progress = _Progress()
    for i in range(1, 31):
        progress(f"loading model.gguf: {i}/30 tensors")
    progress.end()
    err = capsys.readouterr().err
    if tty:
        assert "\r" in err and "\x1b[K" in err
    else:
        assert "\r" not in err and "\x1b" not in err
        assert err.splitlines() == ["loading model.gguf: 1/30 tensors", "loading model.gguf: 30/30 tensors"]


def test_each_recall_is_one_line_naming_what_came_back() -> None:
    import click

    from halo_client.cli.render import recall_report
    from halo_client.conversation.memory import Match, Recall

    event = PruneEvent("sentence", 12, 3, (40, 41, 42), 0.2, -5, " My locker\ncode is 4821. ", restored=True)
    match = Match(event, ("words",), 3.14159, 0.712, ("locker", "code"))
    [line] = recall_report([Recall(event, "What is my locker code?", match)])
    assert click.unstyle(line) == ('  recalled sentence 12 (3 tokens) by words "locker", "code" (BM25 3.14, similarity '
                                   "0.71): My locker code is 4821.")
    kept = PruneEvent("sentence", 3, 1, (7, 8), float("nan"), 0, "My locker code is 4821.")
    [line] = recall_report([Recall(kept, "What is my locker code?", Match(kept, ("meaning",), 0.0, 0.52, ()),
                                         kept=True)])
    assert click.unstyle(line) == "  kept sentence 3 (2 tokens) by meaning (similarity 0.52): My locker code is 4821."
    assert recall_report([]) == []


def test_a_prune_of_many_units_is_one_line_and_a_single_token_is_one_token() -> None:
    import click

    from halo_client.cli.render import prune_line

    one = PruneEvent("sentence", 4, 1, (9,), 0.5, 1, "Hi")
    assert prune_line(one) == "sentence 4 (brightness 0.50, 1 token): Hi"
    many = PruneResult([PruneEvent("sentence", u, 1, (u, u + 1), 0.1 * u, 2, "x") for u in range(1, 437)],
                       active_before=5000, active_after=4000, budget=4096)
    [line] = prune_report(many)
    assert click.unstyle(line) == "  pruned 436 sentences (872 tokens, brightness 0.10 to 43.60): /pruned lists them"
    few = PruneResult(many.events[:3], active_before=10, active_after=4, budget=5)
    assert len(prune_report(few)) == 3  # a few are listed one by one, with the numbers /restore takes


def test_the_plain_view_for_a_pipe_has_no_colour_codes_and_says_how_to_read_it() -> None:
    from halo_client.cli.render import render_plain

    state = _locker_chat()
    lines = render_plain(state)
    assert not any("\x1b" in line for line in lines)
    assert lines[0] == "you:"
    assert lines[1].endswith("My locker code is 4817.") and "3.00" in lines[1]  # its brightest token
    assert lines[2].endswith("What is my locker code?")
    assert lines[1].split()[0] > lines[2].split()[0]  # a higher bar for the brighter sentence
    assert "dim" in lines[-1] and "bright" in lines[-1] and "brightest token" in lines[-1]
