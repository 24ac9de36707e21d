"""A small byte-level BPE made in the test, so segmentation sees pieces like a real model's:
space-prefixed words, merged punctuation, and multi-byte characters split across tokens."""

from __future__ import annotations

import itertools
import re
from collections import Counter

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Dr. Smith paid 3.14 dollars, e.g. for tea! "
    "Wait... what? See https://example.com/a.b for more. New line follows.\n"
    "Another sentence here. Is it 2.5 or 2.50? Yes! The end...\n"
) * 20
_PRE = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+")


def train(corpus: str = CORPUS, merges: int = 120) -> list[tuple[bytes, bytes]]:
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in _PRE.findall(corpus))
    rules: list[tuple[bytes, bytes]] = []
    for _ in range(merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for a, b in itertools.pairwise(word):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = pairs.most_common(1)[0][0]
        rules.append(best)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return rules


RULES = train()


def pieces(text: str) -> list[bytes]:
    out: list[bytes] = []
    for chunk in _PRE.findall(text):
        word = [bytes([b]) for b in chunk.encode()]
        for a, b in RULES:
            i = 0
            while i + 1 < len(word):
                if word[i] == a and word[i + 1] == b:
                    word[i : i + 2] = [a + b]
                else:
                    i += 1
        out.extend(word)
    return out
