"""Sentence and line boundaries on token pieces.

A sentence ends after `.`, `!` or `?` (and any closing quotes or brackets right after them)
followed by whitespace or the end of the text, after a CJK full stop, exclamation or question
mark (U+3002, U+FF01, U+FF1F; no space needed), and at every newline (a newline right after a
sentence's end goes with that sentence, never alone). A period does not end a sentence:

- inside a number ("3.14") or a URL ("example.com/a.b"): no whitespace follows it there;
- in an ellipsis ("wait... then");
- after a title or Latin abbreviation that never ends a sentence on its own ("Dr.", "Mr.",
  "e.g.", "i.e.", "vs.", "cf.") or an initial ("J. R. R. Tolkien");
- after an abbreviation that only continues a sentence before a number ("No. 5", "p. 12",
  "Fig. 3"; "the answer is no. Next" does end);
- after an abbreviation that may as well end one ("etc.", "Inc.", "a.m.", "Jan."), when the
  next word starts in lower case or with a digit ("etc. and", "Jan. 5"), but not before a
  capital ("apples etc. Then").

Boundaries are found on the decoded text and mapped back to tokens by byte offset: a token
belongs to the sentence holding its first byte, so a piece like ". " stays with the sentence
its period ends. Whitespace is never a sentence or a line of its own: a blank line goes with the
text before it. Runs once per message, never per frame.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

#: never end a sentence after these (lower case, without the final period)
CONTINUING: Final = frozenset({
    "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "mt", "gen", "gov", "sen", "rep", "rev",
    "e.g", "i.e", "vs", "cf", "approx", "viz", "ca",
})
#: continue a sentence only before a number
BEFORE_NUMBER: Final = frozenset({"no", "nr", "nos", "p", "pp", "vol", "ch", "fig", "figs", "art", "sec", "eq", "ref"})
#: continue a sentence only before a lower-case word or a number
MAY_END: Final = frozenset({
    "etc", "al", "inc", "ltd", "co", "corp", "a.m", "p.m", "u.s", "u.k", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})
ABBREVIATIONS: Final = CONTINUING | BEFORE_NUMBER | MAY_END
_END: Final = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)|[\u3002\uff01\uff1f]+")
_WORD_BEFORE: Final = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_NEXT: Final = re.compile(r"\s*(\S)")
_LINE_BREAK: Final = re.compile(r"[^\S\n]*\n")


def _continues(text: str, match: re.Match[str]) -> bool:
    """Whether the single period of `match` is an abbreviation's, inside a sentence."""
    # a window, not the whole text before: one period must not cost a scan of the message
    word_match = _WORD_BEFORE.search(text, max(0, match.start() - 32), match.start())
    if word_match is None:
        return False
    word = word_match.group(1)
    key = word.lower().rstrip(".")
    following = _NEXT.match(text, match.end())
    nxt = following.group(1) if following else ""
    if key in CONTINUING:
        return True
    if len(word) == 1 and word.isupper():  # an initial: "J. R. R. Tolkien"
        return nxt.isupper()
    if key in BEFORE_NUMBER:
        return nxt.isdigit()
    if key in MAY_END:
        return nxt.islower() or nxt.isdigit()
    return False


def _sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence end (newlines included)."""
    ends = []
    for match in _END.finditer(text):
        punct = match.group().rstrip("\"'\u201d\u2019)]")
        if punct.startswith("..") and punct.rstrip("!?") == punct:
            continue  # an ellipsis trails off; the sentence goes on
        if punct == "." and _continues(text, match):
            continue
        # a line break right after the end closes the same sentence: no whitespace-only one
        line_break = _LINE_BREAK.match(text, match.end())
        ends.append(line_break.end() if line_break else match.end())
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
    blank = np.fromiter((not p.strip() for p in pieces), bool, n)
    return _without_blank(index_of(_sentence_ends(text)), blank), _without_blank(index_of(newlines), blank)


def _without_blank(ids: npt.NDArray[np.int32], blank: npt.NDArray[np.bool_]) -> npt.NDArray[np.int32]:
    """`ids` with every segment of whitespace alone (the blank line between paragraphs, the
    spaces before a line break) joined to the segment before it, or after it at the start: a
    unit of no text is nothing to prune, list or restore. Renumbered 0, 1, 2, ..."""
    segments, inverse = np.unique(ids, return_inverse=True)
    has_text = np.zeros(segments.size, bool)
    np.logical_or.at(has_text, inverse, ~blank)
    if not has_text.any():
        return np.zeros_like(ids)
    # each segment's text-holding owner: itself, else the nearest one before, else the first after
    owner = np.where(has_text, np.arange(segments.size), -1)
    owner = np.maximum.accumulate(owner)
    owner[owner < 0] = int(np.flatnonzero(has_text)[0])
    _, renumbered = np.unique(owner[inverse], return_inverse=True)
    return renumbered.astype(np.int32)
