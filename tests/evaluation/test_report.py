"""Report outputs: the table lists every row; the plot is valid SVG with one line per policy."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from halo_client.evaluation.report import markdown_table, svg_line_plot


def test_markdown_table() -> None:
    text = markdown_table([{"policy": "recency", "nll": 0.5}, {"policy": "random", "nll": 1.25}],
                          [("policy", "Policy"), ("nll", "NLL gap")])
    assert text.splitlines() == ["| Policy | NLL gap |", "|---|---|", "| recency | 0.500 |",
                                 "| random | 1.250 |"]


def test_svg_plot_is_well_formed() -> None:
    svg = svg_line_plot({"brightness": [(0.25, 1.0), (0.5, 0.4), (0.75, 0.1)],
                         "random <seeded>": [(0.25, 2.0), (0.5, 1.0), (0.75, 0.3)]},
                        title="NLL gap vs budget", x_label="budget", y_label="NLL gap")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2
    assert len(root.findall(f"{ns}circle")) == 6
    assert "random &lt;seeded&gt;" in svg
    with pytest.raises(ValueError):
        svg_line_plot({}, title="", x_label="", y_label="")


def test_results_go_between_their_markers_and_the_page_keeps_its_text(tmp_path: Path) -> None:
    from halo_client.evaluation.report import RESULTS_END, RESULTS_START, _write_results

    page = tmp_path / "pruning.md"
    _write_results(page, "first results")
    assert page.read_text() == f"{RESULTS_START}\nfirst results\n{RESULTS_END}\n"
    page.write_text(f"# How we measure\n\nText before.\n\n{page.read_text()}\n## Notes\nText after.\n")
    _write_results(page, "second results")
    text = page.read_text()
    assert text.startswith("# How we measure\n\nText before.\n\n") and text.endswith("\n## Notes\nText after.\n")
    assert "second results" in text and "first results" not in text


def test_the_paraphrase_goal_is_met_only_when_its_interval_clears_it() -> None:
    """Recall as a share of the full context's: with the full context answering one question of
    twenty, a ratio of 1.0 says nothing (its interval spans 0.8): the verdict says so, not "met"."""
    from halo_client.evaluation.report import DEFAULT_POLICY
    from halo_client.evaluation.sections import goal_lines

    def rows(full: list[float], pruned: list[float]) -> list[dict[str, object]]:
        return [{"conversation": f"c{i}", "set": "generated", "policy": DEFAULT_POLICY, "budget": 0.25, "step": 0,
                 "kind": "question", "recall (paraphrased)": p, "full_recall (paraphrased)": f}
                for i, (f, p) in enumerate(zip(full, pruned, strict=True))]

    def verdict(found: list[dict[str, object]]) -> str:
        tables: dict[str, list[dict[str, object]]] = {"generated": []}
        [line] = [g for g in goal_lines(found, tables, {"seconds": 60.0}, 200) if "other words" in g]
        return line

    # one answered with the full context, another after pruning: a mean share of 1.0
    rare = rows([1.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8)
    assert ": 1.000 [" in verdict(rare) and "not shown: the interval spans 0.8" in verdict(rare)
    assert verdict(rows([1.0] * 10, [1.0] * 10)).endswith(": met.")
    assert verdict(rows([1.0] * 10, [0.0] * 10)).endswith(": not met.")


def test_beating_recency_and_memory_needs_recall_or_kl() -> None:
    """Issue 19: the default beats recency + the same memory with non-overlapping paired intervals on
    recall or KL, not worse on the other; the answer NLL alone does not meet it."""
    from halo_client.evaluation.report import DEFAULT_POLICY
    from halo_client.evaluation.sections import RECENCY_MEMORY, goal_lines

    def verdict(measure: str, default: float, recency: float) -> str:
        rows = [{"conversation": f"c{i}", "set": "generated", "policy": policy, "budget": 0.5, "step": 0,
                 "kind": "question", measure: value + 0.01 * (i % 3)}
                for i in range(10) for policy, value in ((DEFAULT_POLICY, default), (RECENCY_MEMORY, recency))]
        [line] = [g for g in goal_lines(rows, {"generated": []}, {"seconds": 60.0}, 200) if RECENCY_MEMORY in g]
        return line

    assert verdict("answer_nll_increase", 0.5, 1.0).endswith(
        ": not met: better on the answer NLL only, and the goal asks for recall or KL.")
    assert verdict("kl", 0.05, 0.1).endswith(": met.")
    assert verdict("kl", 0.1, 0.1).endswith(": not met: not separable on any measure.")
    assert verdict("kl", 0.2, 0.1).endswith(": not met.")


def test_a_difference_of_float_noise_is_not_a_win() -> None:
    """Two policies that kept the same tokens differ in the last bits of their logits: a paired
    difference of -1e-9 in every conversation is no win, in the comparisons or the goals."""
    from halo_client.evaluation.report import DEFAULT_POLICY, comparison_lines
    from halo_client.evaluation.sections import RECENCY_MEMORY, goal_lines
    from halo_client.evaluation.stats import Estimate
    from halo_client.evaluation.summary import verdict

    assert verdict(Estimate(-1e-9, -2e-9, -1e-10, 10), "answer_nll_increase") == "not separable"
    assert verdict(Estimate(-0.1, -0.2, -0.01, 10), "answer_nll_increase") == "better"
    assert verdict(Estimate(-0.1, -0.2, -0.01, 10), "recall") == "worse"
    assert verdict(Estimate(0.1, -0.2, 0.3, 10), "kl") == "not separable"
    rows = [{"conversation": f"c{i}", "set": "generated", "policy": policy, "budget": 0.25, "step": 0,
             "kind": "question", "answer_nll_increase": 0.5 + 0.01 * (i % 3) - shift}
            for i in range(10) for policy, shift in ((DEFAULT_POLICY, 1e-9), (RECENCY_MEMORY, 0.0))]
    [line] = [g for g in goal_lines(rows, {"generated": []}, {"seconds": 60.0}, 200) if RECENCY_MEMORY in g]
    assert "(not separable)" in line and "(better)" not in line
    [compared] = [c for c in comparison_lines(rows, DEFAULT_POLICY, 0.25, 200) if c.startswith("- answer NLL")]
    assert compared == f"- answer NLL increase at 25%: not separable from {RECENCY_MEMORY}."
