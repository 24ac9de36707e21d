"""Memory's cost figures time what the chat runs between a message and its reply."""

from halo_client.evaluation.costs import recall_cost
from halo_client.evaluation.sections import cost_section
from halo_client.testing.embedder import WordHashEmbedder


def test_recall_step_includes_the_context_match() -> None:
    costs = recall_cost(WordHashEmbedder(), sentences=80, context_tokens=300, messages=3)
    assert costs["archived"] >= 70
    assert 250 <= costs["context_tokens"] <= 300  # the context the match runs over is the one asked for
    scorers = {"words", "meaning", "hybrid"}
    assert set(costs["ms_per_message"]) == set(costs["ms_in_context"]) == set(costs["ms_keeping_up"]) == scorers
    for scorer in scorers:  # the context's match is part of the recall step, not added to it
        assert 0 <= costs["ms_in_context"][scorer] <= costs["ms_per_message"][scorer]
    text = "\n".join(cost_section(costs))
    assert "a context of " in text and "of it, the context's match" in text


def test_cost_section_reads_runs_that_timed_the_archive_alone() -> None:
    old = {"archived": 2000, "messages": 20, "load_average": 1.0, "ms_per_message": {"meaning": 12.0},
           "ms_p90": {"meaning": 20.0}, "ms_keeping_up": {"meaning": 3.0}}
    text = "\n".join(cost_section(old))
    assert "| meaning | 12.0 | 20.0 | 3.0 |" in text and "context" not in text
