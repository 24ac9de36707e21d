"""Memory: pruned is not gone. The newest user message brings back the pruned sentences it matches.

The archive is the conversation's own pruned sentences (`Pruner.pruned_units`: the audit trail
of the state, so a saved session carries it with no extra file). Before each reply the user's
newest message is the query: the archived sentences that match it best (BM25, SQLite's FTS5
from the standard library, Porter-stemmed words, stop words left out of the query) are
restored, at most `max_recalled` of them and only those scoring at least `min_relevance`, and
marked recalled in the audit trail; the prune that follows keeps them and takes something else
to fit the budget.

The index is rebuilt from the state for every query, in memory: a few hundred pruned sentences
take about a millisecond, and nothing can drift out of step with the state (a session loaded,
a sentence restored by hand, a prune by `/prune`). Nothing here does I/O.

What it buys, measured on held-out conversations, is in docs/pruning.md.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from halo_client.conversation.pruner import PruneEvent, Pruner, PruneResult
from halo_client.conversation.state import ConversationState

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
    "thank", "hi", "hello", "okay", "ok", "yes", "also", "again", "really", "much", "many", "one", "get", "got"
))


class MemorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: sentences restored per message at most (1: what the pruning benchmark's tuning split chose
    #: among 1 and 2, for the best recall at a KL within 0.01 of the lowest; docs/pruning.md)
    max_recalled: int = Field(1, ge=0)
    #: BM25 relevance a sentence needs to come back (FTS5's bm25(), sign flipped: higher matches better)
    min_relevance: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class Recall:
    """A pruned sentence brought back: the restore event, its relevance, the query."""

    event: PruneEvent
    relevance: float
    query: str


def _match_expression(query: str) -> str:
    """FTS5 syntax for "any of the query's words but stop words": each quoted, so no word is an
    operator."""
    words = dict.fromkeys(w for w in (w.lower() for w in _WORD.findall(query)) if w not in STOP_WORDS)
    return " OR ".join(f'"{w}"' for w in words)


def relevance(texts: list[str], query: str) -> npt.NDArray[np.float64]:
    """BM25 relevance of each text to `query` (0 where it matches none of its words)."""
    out = np.zeros(len(texts), np.float64)
    expression = _match_expression(query)
    if not expression or not texts:
        return out
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='porter unicode61')")
        db.executemany("INSERT INTO t(rowid, text) VALUES (?, ?)", ((i + 1, t) for i, t in enumerate(texts)))
        for rowid, score in db.execute("SELECT rowid, bm25(t) FROM t WHERE t MATCH ?", (expression,)):
            out[rowid - 1] = -score
    finally:
        db.close()
    return out


class Memory:
    def __init__(self, settings: MemorySettings | None = None) -> None:
        self.settings = settings or MemorySettings()

    def candidates(self, state: ConversationState, pruner: Pruner, query: str) -> list[tuple[PruneEvent, float]]:
        """The archived (pruned) sentences matching `query`, best first, within the settings."""
        if not self.settings.enabled or self.settings.max_recalled == 0:
            return []
        archived = [e for e in pruner.pruned_units(state) if e.text.strip()]
        if not archived:
            return []
        scores = relevance([e.text for e in archived], query)
        order = np.argsort(-scores, kind="stable")
        return [(archived[i], float(scores[i])) for i in order[: self.settings.max_recalled].tolist()
                if scores[i] > 0 and scores[i] >= self.settings.min_relevance]

    def recall(self, state: ConversationState, pruner: Pruner, query: str) -> list[Recall]:
        """Restore the archived sentences that match `query` best and mark them recalled at the
        current turn; the caller prunes next, protecting `protected_positions(recalls)`."""
        recalls = []
        turn = len(state.turns) - 1
        for event, score in self.candidates(state, pruner, query):
            restored = pruner.restore(state, event)
            state.mark_recalled(np.asarray(event.positions, np.int64), turn=turn)
            recalls.append(Recall(restored, score, query))
        return recalls


def protected_positions(state: ConversationState, recalls: list[Recall]) -> npt.NDArray[np.bool_]:
    """A mask over `state` of the recalled sentences: the prune right after must keep them."""
    mask = np.zeros(len(state), bool)
    for r in recalls:
        mask[np.asarray(r.event.positions, np.int64)] = True
    return mask


def prune_keeping(pruner: Pruner, state: ConversationState, budget: int, recalls: list[Recall], *,
                  scores: npt.NDArray[np.floating] | None = None) -> PruneResult:
    """Prune to `budget` keeping what was just recalled; if it does not fit beside the rest of
    the protected content (the system prompt, the newest message), it goes again."""
    protect = protected_positions(state, recalls) if recalls else None
    result = pruner.prune(state, budget, scores=scores, protect=protect)
    if result.over_budget and protect is not None:
        again = pruner.prune(state, budget, scores=scores)
        result.events += again.events
        result.active_after, result.over_budget = again.active_after, again.over_budget
    return result
