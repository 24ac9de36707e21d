"""Matching by words: BM25 over SQLite's FTS5 (standard library), Porter-stemmed, stop words left out.

`WordIndex` keeps one in-memory FTS5 table of the archived texts and is brought in step with the
archive before each query (new texts inserted, texts no longer archived deleted), so a query
over a long chat indexes only what is new. `content_terms` is the same stemmer's view of a text:
the paraphrase split of the pruning benchmark is checked with it. `query_names` are the names a
message mentions, which matching by meaning discounts (`semantic`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+")
#: words that say nothing about what a message is about: a query made of them alone recalls
#: nothing, and they do not make a sentence match ("Do you remember my sister?" is about a sister)
STOP_WORDS = frozenset((
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having",
    "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it",
    "its", "itself", "just", "let", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off",
    "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "please", "same",
    "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then",
    "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was",
    "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you",
    "your", "yours", "yourself", "yourselves", "tell", "know", "remember", "think", "say", "said", "thanks",
    "thank", "hi", "hello", "okay", "ok", "yes", "also", "again", "really", "much", "many", "one", "get", "got",
    # what the tokenizer leaves of contractions and possessives ("sister's", "don't", "I'll")
    "s", "t", "d", "ll", "m", "re", "ve",
))
_TOKENIZE = "porter unicode61"


def query_words(text: str) -> list[str]:
    """The words of `text` a query uses: lower-cased, stop words out, each once, in order."""
    return list(dict.fromkeys(w for w in (w.lower() for w in _WORD.findall(text)) if w not in STOP_WORDS))


def query_names(text: str) -> list[str]:
    """The names in `text`: capitalized words ("Gina", "Paris"; not "LGBTQ", not a stop word)
    other than its first word, whose capital says nothing. Each once, in order."""
    words = _WORD.findall(text)[1:]
    return list(dict.fromkeys(w for w in words if w[:1].isupper() and w[1:].islower() and w.lower() not in STOP_WORDS))


def _match_expression(words: Iterable[str]) -> str:
    """FTS5 syntax for "any of these words": each quoted, so no word is an operator."""
    return " OR ".join(f'"{w}"' for w in words)


def _stems(db: sqlite3.Connection, words: Sequence[str]) -> list[str]:
    """Each word's Porter stem, by FTS5's own tokenizer (one row per word)."""
    db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS stem_in USING fts5(w, tokenize='{_TOKENIZE}')")
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS stem_out USING fts5vocab(stem_in, 'instance')")
    db.execute("DELETE FROM stem_in")
    db.executemany("INSERT INTO stem_in(rowid, w) VALUES (?, ?)", ((i + 1, w) for i, w in enumerate(words)))
    stems = dict(db.execute("SELECT doc, term FROM stem_out"))
    return [stems.get(i + 1, w) for i, w in enumerate(words)]


def content_terms(text: str) -> set[str]:
    """The stems of `text`'s content words (stop words left out): what BM25 can match on."""
    db = sqlite3.connect(":memory:")
    try:
        return set(_stems(db, query_words(text)))
    finally:
        db.close()


class WordIndex:
    """BM25 relevance of archived texts to a query; `sync` the archive, then `scores`."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{_TOKENIZE}')")
        self.rows: dict[str, int] = {}
        self.next_row = 1

    def sync(self, texts: Iterable[str]) -> None:
        """Index exactly these texts (duplicates once)."""
        wanted = set(texts)
        gone = [self.rows.pop(t) for t in list(self.rows) if t not in wanted]
        if gone:
            self.db.executemany("DELETE FROM t WHERE rowid = ?", ((r,) for r in gone))
        new = [t for t in wanted if t not in self.rows]
        for text in new:
            self.rows[text] = self.next_row
            self.next_row += 1
        if new:
            self.db.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", ((self.rows[t], t) for t in new))

    def scores(self, texts: Sequence[str], query: str) -> npt.NDArray[np.float64]:
        """BM25 relevance of each of `texts` (which must be indexed) to `query`; 0 where it
        matches none of the query's words. Higher matches better (FTS5's bm25(), sign flipped)."""
        out = np.zeros(len(texts), np.float64)
        expression = _match_expression(query_words(query))
        if not expression or not texts:
            return out
        found = {row: -score for row, score in self.db.execute("SELECT rowid, bm25(t) FROM t WHERE t MATCH ?",
                                                               (expression,))}
        for i, text in enumerate(texts):
            out[i] = found.get(self.rows[text], 0.0)
        return out

    def matched_words(self, text: str, query: str) -> list[str]:
        """The query's words that `text` matches (stemmed alike): why BM25 found it."""
        words = query_words(query)
        stems = _stems(self.db, [*words, *query_words(text)])
        mine = set(stems[len(words):])
        return [w for w, s in zip(words, stems[: len(words)], strict=True) if s in mine]

    def close(self) -> None:
        self.db.close()


def relevance(texts: list[str], query: str) -> npt.NDArray[np.float64]:
    """BM25 relevance of each text to `query` among `texts` alone (0 where it matches none of its words)."""
    index = WordIndex()
    try:
        index.sync(texts)
        return index.scores(texts, query)
    finally:
        index.close()
