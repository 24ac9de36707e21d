"""Sentence and line boundaries on token pieces.

A sentence ends after `.`, `!` or `?` followed by whitespace or the end of the text, and at
every newline. A period does not end a sentence inside a number ("3.14"), after a common
abbreviation ("e.g.", "Dr."), as part of an ellipsis ("wait... then"), or inside a URL (no
whitespace follows it there). Boundaries are found on the decoded text and mapped back to
tokens by byte offset: a token belongs to the sentence holding its first byte, so a piece like
". " stays with the sentence its period ends. Runs once per message, never per frame.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

ABBREVIATIONS: Final = frozenset({
    "e.g", "i.e", "etc", "vs", "cf", "approx", "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st",
    "no", "fig", "vol", "ch", "p", "pp", "al", "inc", "ltd", "co", "mt", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "a.m", "p.m",
})
_END: Final = re.compile(r"[.!?]+(?=\s|$)")
_WORD_BEFORE: Final = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence end (newlines included)."""
    ends = []
    for match in _END.finditer(text):
        punct = match.group()
        if punct.startswith("..") and punct.rstrip("!?") == punct:
            continue  # an ellipsis trails off; the sentence goes on
        if punct == ".":
            word = _WORD_BEFORE.search(text, 0, match.start())
            if word and word.group(1).lower().rstrip(".") in ABBREVIATIONS:
                continue
        ends.append(match.end())
    ends.extend(m.end() for m in re.finditer("\n", text))
    return sorted(set(ends))


def segment(pieces: Sequence[bytes]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Sentence and line index (0, 1, 2, ... within this text) of every token."""
    n = len(pieces)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    lengths = np.fromiter((len(p) for p in pieces), np.int64, n)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # byte offset of each token
    data = b"".join(pieces)
    text = data.decode("utf-8", errors="replace")
    # byte offset of every character boundary, so character offsets map back to bytes
    if len(text) == len(data):
        char_to_byte = np.arange(len(text) + 1)
    else:
        widths = [len(ch.encode("utf-8", errors="replace")) if ch != "\ufffd" else 1 for ch in text]
        char_to_byte = np.concatenate([[0], np.cumsum(widths)])
        char_to_byte = np.minimum(char_to_byte, len(data))

    token_ends = starts + lengths

    def index_of(ends: list[int]) -> npt.NDArray[np.int32]:
        snapped = set()
        for b in char_to_byte[np.asarray(ends, dtype=np.int64)].tolist() if ends else []:
            t = int(np.searchsorted(starts, b, side="right")) - 1
            if 0 <= t < n and b > starts[t] and b < token_ends[t]:
                # A boundary inside a token: keep the token with the sentence it ends when the
                # rest of it is whitespace (". ", ".\n"), else start the new one with it ("\nThe").
                b = int(token_ends[t]) if not data[b : token_ends[t]].strip() else int(starts[t])
            snapped.add(b)
        bounds = np.asarray(sorted(snapped), dtype=np.int64)
        # a token whose first byte is at or past k boundaries is in segment k
        return np.searchsorted(bounds, starts, side="right").astype(np.int32)

    newlines = [m.end() for m in re.finditer("\n", text)]
    return index_of(_sentence_ends(text)), index_of(newlines)
