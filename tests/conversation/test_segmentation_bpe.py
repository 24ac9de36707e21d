"""Segmentation on the pieces of a real byte-level BPE (the `tokenizers` library, as GPT-2,
Llama 3 and SmolLM tokenize), trained here in-process: `Ġ`-style pieces turned back into
their exact bytes, multi-byte characters split across tokens, punctuation merged with spaces."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.segmentation import segment
from halo_client.reference.tokenizer import _byte_decoder

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Dr. Smith paid 3.14 dollars, e.g. for tea!",
    "Wait... what? See https://example.com/a.b for more. New line follows.\n",
    "Another sentence here. Is it 2.5 or 2.50? Yes! The end...\n",
    "Mr. J. R. R. Tolkien wrote it. She said \"Stop.\" Then left. Apples, pears, etc. Then more.",
    "See No. 5 and p. 12. The answer is no. Fig. 3 shows it. Meet at 10 a.m. tomorrow.",
    "Emoji 😀 here. And 世界 there. 你好。再见！真的？ Ünïcödé wörds, naïve café.",  # noqa: RUF001
]


@lru_cache(maxsize=1)
def _bpe() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 30, trainer=trainer)
    return tok


def pieces(text: str) -> list[bytes]:
    byte_of = _byte_decoder()  # the piece `Ġthe` is the bytes b" the"
    out = [bytes(byte_of[ch] for ch in piece) for piece in _bpe().encode(text).tokens]
    assert b"".join(out) == text.encode()  # exact bytes, as the server's `piece`s are
    return out


def sentences(text: str) -> list[str]:
    ps = pieces(text)
    ids, _ = segment(ps)
    out: dict[int, bytes] = {}
    for p, i in zip(ps, ids.tolist(), strict=True):
        out[i] = out.get(i, b"") + p
    return [v.decode("utf-8", "replace").strip() for _, v in sorted(out.items())]


def test_the_tokenizer_is_a_real_byte_level_bpe() -> None:
    ps = pieces("Emoji 😀 here. The quick fox.")
    assert b" here" in ps and b" The" in ps  # space-prefixed word pieces
    assert any(len(p) < len("😀".encode()) and p and p[0] >= 0x80 for p in ps)  # an emoji split across tokens


# the basic cases (numbers, "Dr.", "e.g.", ellipses, URLs, newlines) are in test_segmentation.py
# on the toy BPE; here, on a real BPE's pieces: those again in one text, and the refinements
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith paid 3.14, e.g. for tea... See https://example.com/a.b now! Next?\nNew line",
         ["Dr. Smith paid 3.14, e.g. for tea... See https://example.com/a.b now!", "Next?", "New line"]),
        ("Mr. J. R. R. Tolkien wrote it. Then more.", ["Mr. J. R. R. Tolkien wrote it.", "Then more."]),
        ('She said "Stop." Then left.', ['She said "Stop."', "Then left."]),
        ("Apples, pears, etc. Then more.", ["Apples, pears, etc.", "Then more."]),
        ("Apples, pears, etc. and more.", ["Apples, pears, etc. and more."]),
        ("See No. 5 and p. 12. The answer is no. Fig. 3 shows it.",
         ["See No. 5 and p. 12.", "The answer is no.", "Fig. 3 shows it."]),
        ("Meet at 10 a.m. tomorrow. Fine.", ["Meet at 10 a.m. tomorrow.", "Fine."]),
        ("你好。再见！真的？ Yes.", ["你好。", "再见！", "真的？", "Yes."]),  # noqa: RUF001
        ("Emoji 😀 here. And 世界 there.", ["Emoji 😀 here.", "And 世界 there."]),
        ("No end at all", ["No end at all"]),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_end_punctuation_stays_with_the_sentence_it_ends() -> None:
    ps = pieces('One. Two! "Three?" Four.')
    ids, _ = segment(ps)
    for k in range(1, len(ps)):
        if ps[k].lstrip()[:1] in (b".", b"!", b"?", b'"') and not ps[k].startswith(b" "):
            assert ids[k] == ids[k - 1]  # joins the sentence before it
    assert ids.max() == 3


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n3,é😀世。\"")), max_size=80))
def test_segments_cover_the_text_in_order(text: str) -> None:
    ps = pieces(text)
    s, lines = segment(ps)
    assert len(s) == len(ps) == len(lines)
    if ps:
        assert s[0] == 0 and lines[0] == 0
        assert (s[1:] >= s[:-1]).all() and (lines[1:] >= lines[:-1]).all()
        # a new line always starts a new sentence
        assert ((lines[1:] > lines[:-1]) <= (s[1:] > s[:-1])).all()
