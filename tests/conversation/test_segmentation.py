"""Sentence and line segmentation on real BPE-style pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.segmentation import segment
from tests.conversation.bpe import pieces


def sentences(text: str) -> list[str]:
    ps = pieces(text)
    assert b"".join(ps) == text.encode()
    ids, _ = segment(ps)
    out: dict[int, bytes] = {}
    for p, i in zip(ps, ids.tolist(), strict=True):
        out[i] = out.get(i, b"") + p
    return [v.decode("utf-8", "replace").strip() for _, v in sorted(out.items())]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The fox jumps. The dog sleeps.", ["The fox jumps.", "The dog sleeps."]),
        ("Is it 3.14 or 2.50? Yes! Done.", ["Is it 3.14 or 2.50?", "Yes!", "Done."]),
        ("Dr. Smith paid, e.g. for tea. Then left.", ["Dr. Smith paid, e.g. for tea.", "Then left."]),
        ("Wait... what? Fine.", ["Wait... what?", "Fine."]),
        ("See https://example.com/a.b for more. Next.", ["See https://example.com/a.b for more.", "Next."]),
        ("First line\nSecond line. Third!", ["First line", "Second line.", "Third!"]),
        ("No end at all", ["No end at all"]),
        ("Emoji 😀 here. And 世界 there.", ["Emoji 😀 here.", "And 世界 there."]),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_lines() -> None:
    text = "one. two.\nthree\n\nfour"
    ps = pieces(text)
    _, lines = segment(ps)
    by_line: dict[int, bytes] = {}
    for p, i in zip(ps, lines.tolist(), strict=True):
        by_line[i] = by_line.get(i, b"") + p
    assert [v.decode().strip() for _, v in sorted(by_line.items()) if v.strip()] == ["one. two.", "three", "four"]


def test_multibyte_characters_split_across_tokens() -> None:
    ps = pieces("Yes 😀. No.")
    assert any(len(p) == 1 and p[0] >= 0x80 for p in ps)  # a byte of the emoji alone
    assert sentences("Yes 😀. No.") == ["Yes 😀.", "No."]


@settings(deadline=None)  # a property of the output, not a timing: a loaded machine must not fail it
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n3,é😀")), max_size=80))
def test_segment_ids_are_dense_and_ordered(text: str) -> None:
    ps = pieces(text)
    s, lines = segment(ps)
    assert len(s) == len(ps) == len(lines)
    if len(ps):
        assert s[0] == 0 and lines[0] == 0
        assert (s[1:] >= s[:-1]).all() and (s[1:] - s[:-1] <= 2).all()
        assert (lines[1:] >= lines[:-1]).all()


@settings(deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n \t3")), max_size=80))
def test_no_sentence_or_line_is_whitespace_alone(text: str) -> None:
    """A blank line or the spaces before a break are never a unit of their own: nothing to
    prune, list in /pruned or restore."""
    ps = pieces(text)
    for ids in segment(ps):
        units: dict[int, bytes] = {}
        for p, i in zip(ps, ids.tolist(), strict=True):
            units[i] = units.get(i, b"") + p
        if text.strip():
            assert all(u.strip() for u in units.values()), (text, units)
        if ids.size:
            assert sorted(units) == list(range(len(units)))  # numbered 0, 1, 2, ...


def test_a_blank_line_goes_with_the_text_before_it() -> None:
    assert sentences("Hello.\n\nWorld.") == ["Hello.", "World."]
    text = "Hello.\n\nWorld."
    ids, _ = segment(pieces(text))
    assert len(set(ids.tolist())) == 2
