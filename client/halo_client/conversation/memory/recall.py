"""Recall: the newest user message brings back the archived sentences it asks for, and says why.

Before each reply the user's newest message is the query over the archive (the conversation's
pruned sentences). Each archived sentence gets a BM25 relevance (`lexical`) and, unless the
scorer is `words`, a cosine similarity to the message (`semantic`). A sentence may come back

- by its meaning: similarity at least `min_similarity` (what it shares with the message beyond
  the message's names: less `name_discount` times its similarity to them, `semantic`);
- by its words: BM25 relevance above 0 and at least `min_relevance` (with `hybrid`, and a
  similarity of at least `min_similarity_with_words`, so one shared word in sentences about
  different things does not bring one back).

A sentence that is itself a question ("What did Leo end up with?") never comes back unless
`recall_questions` says so: what a later question asks for is the answer. And the answer may say
little alone ("The Minnesota Wolves!"): with `reply_with_question`, a reply right after an archived
question is matched as the pair too, and its similarity is the better of the two (`with_questions`).

The message's best matches by meaning that are still in the context (not protected already, not
just brought back; at most `keep_in_context`, by the same rules) are kept through the prune that
follows too (`in_context`): at the first prune nothing is archived, and what a question asks for
may still be there, for the pruner's score alone to take out.

Those that may are ordered (by BM25, by similarity, or for `hybrid` by the reciprocal-rank fusion
of both orders, `fusion`), and the first `max_recalled` are restored, marked recalled in the audit
trail, each with the reason it came back (`Recall.why`: the scorer, the similarity, the words it
shares with the message). The prune that follows keeps them and takes something else to fit.

The archive is read from the state for every query (`Pruner.pruned_units`), so nothing drifts out
of step with it (a session loaded, a sentence restored by hand, a `/prune`); the word index and
the embeddings are kept between queries and brought in step with it, so a query indexes and
embeds only what was archived since the last one, and nothing when the chat has already brought
them in step after the reply (`keep_up`).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from halo_client.conversation.memory.fusion import reciprocal_rank_fusion
from halo_client.conversation.memory.lexical import WordIndex, query_names
from halo_client.conversation.memory.semantic import Embedder, MeaningIndex
from halo_client.conversation.memory.settings import EmbedderName, MemorySettings, Scorer
from halo_client.conversation.pruner import PrunedSpans, PruneEvent, Pruner, PruneResult, unit_starts
from halo_client.conversation.state import ROLES, ConversationState, RankedBy
from halo_client.errors import HaloError, joined


@dataclass(frozen=True)
class Match:
    """An archived sentence the query may bring back, and why."""

    event: PruneEvent
    #: how it came to be here: "meaning", "words", or both
    by: tuple[str, ...]
    #: BM25 relevance (0: no shared word) and cosine similarity (None: not computed)
    relevance: float
    similarity: float | None
    #: the message's words it shares (stemmed alike)
    words: tuple[str, ...]
    #: the message's names whose similarity was discounted (`lexical.query_names`)
    names: tuple[str, ...] = ()
    #: the archived question it was matched with, when the pair matched better (`with_questions`)
    question: str | None = None

    @property
    def why(self) -> str:
        """One line: `meaning (similarity 0.71)`, `meaning (similarity 0.48 beyond "Gina")`,
        `meaning (similarity 0.44 with the question before it)`,
        `words "locker", "code" (BM25 3.10, similarity 0.62)`."""
        parts = []
        if "meaning" in self.by:
            names = ", ".join(f'"{n}"' for n in self.names)
            beyond = f" beyond {names}" if names else ""
            asked = " with the question before it" if self.question is not None else ""
            parts.append(f"meaning (similarity {self.similarity:.2f}{beyond}{asked})")
        if "words" in self.by:
            shared = ", ".join(f'"{w}"' for w in self.words) or "its words"
            similarity = f", similarity {self.similarity:.2f}" if self.similarity is not None else ""
            parts.append(f"words {shared} (BM25 {self.relevance:.2f}{similarity})")
        return " and ".join(parts)


@dataclass(frozen=True)
class Recall:
    """A pruned sentence brought back: the restore event, the query, and why it matched."""

    event: PruneEvent
    query: str
    match: Match
    #: still in the context, and kept through the prune that follows: nothing was brought back
    kept: bool = False

    @property
    def action(self) -> str:
        """What memory did: "recalled" (brought back) or "kept" (kept in the context)."""
        return "kept" if self.kept else "recalled"

    @property
    def relevance(self) -> float:
        return self.match.relevance

    @property
    def why(self) -> str:
        return self.match.why


#: a question mark at the end, closing quotes and brackets aside
_ASKS = re.compile(r"\?[\"'\u201d\u2019)\]]*\s*$")


def questions(texts: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Which of `texts` are questions: they end in a question mark."""
    return np.fromiter((_ASKS.search(t) is not None for t in texts), bool, len(texts))


def replies(asks: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Which texts reply to a question: each asks none and comes right after one that does, in the
    archive's order (the pruned sentence before it, which the recent window usually makes its
    neighbour in the chat too; this is what the replays in docs/pruning.md measured)."""
    return np.flatnonzero(asks[:-1] & ~asks[1:]) + 1 if asks.size > 1 else np.zeros(0, np.int64)


def question_pairs(texts: Sequence[str], answering: npt.NDArray[np.int64]) -> list[str]:
    """Each reply with the question before it, as one text (question first)."""
    return [f"{texts[i - 1]} {texts[i]}" for i in answering.tolist()]


def with_questions(meaning: MeaningIndex, texts: Sequence[str], asks: npt.NDArray[np.bool_], query: str,
                   name_discount: float, similarity: npt.NDArray[np.float64]
                   ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """`similarity` with each reply's (`replies`) raised to its pair's with the question before it
    where the pair matches `query` better; and which replies the pair decided."""
    answering = replies(asks)
    paired = np.zeros(len(texts), bool)
    if not answering.size:
        return similarity, paired
    pairs = meaning.similarities(question_pairs(texts, answering), query, name_discount)
    better = pairs > similarity[answering]
    out = similarity.copy()
    out[answering[better]] = pairs[better]
    paired[answering[better]] = True
    return out, paired


def decide(settings: MemorySettings, relevance: npt.NDArray[np.float64],
           similarity: npt.NDArray[np.float64] | None, asks: npt.NDArray[np.bool_] | None = None) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Which archived sentences come back, best first (at most `max_recalled`), from their BM25
    relevance and similarity (None: matching words only) and which of them are questions (`asks`,
    None: none); and which may by meaning, by words."""
    n = len(relevance)
    by_words = (relevance > 0) & (relevance >= settings.min_relevance)
    if settings.scorer == "words" or similarity is None:
        by_meaning = np.zeros(n, bool)
        order = relevance
    elif settings.scorer == "meaning":
        by_meaning = similarity >= settings.min_similarity
        by_words = np.zeros(n, bool)
        order = similarity
    else:
        by_meaning = similarity >= settings.min_similarity
        by_words &= similarity >= settings.min_similarity_with_words
        order = reciprocal_rank_fusion([relevance, similarity], [relevance > 0, np.ones(n, bool)])
    may = by_meaning | by_words
    if asks is not None and not settings.recall_questions:
        may &= ~asks
    chosen = np.flatnonzero(may)
    return chosen[np.argsort(-order[chosen], kind="stable")][: settings.max_recalled], by_meaning, by_words


def default_embedder(progress: Callable[[str], None] | None = None, name: EmbedderName | None = None) -> Embedder:
    """The embedder `name` (`halo_client.embedding`; None: the settings' default), fetched on first
    use (`progress`: its lines)."""
    from halo_client.embedding import load_embedder

    return load_embedder(progress=progress or (lambda _line: None), name=name or MemorySettings().embedder)


class Memory:
    """`embedder`: the sentence embedder for `meaning` and `hybrid` (None: the settings' `embedder`,
    loaded on first use; if it cannot be, memory matches words only and says so in `notice`)."""

    def __init__(self, settings: MemorySettings | None = None, *, embedder: Embedder | None = None,
                 load_embedder: Callable[[], Embedder] | None = None) -> None:
        self.settings = settings or MemorySettings()
        self.words = WordIndex()
        self.meaning: MeaningIndex | None = MeaningIndex(embedder) if embedder is not None else None
        self._load_embedder = load_embedder
        self._loading = threading.Lock()
        #: set when memory could not do what its settings ask (the embedder could not be loaded)
        self.notice: str | None = None
        #: archived units' texts by (first position, size): read from the state once
        self._texts: dict[tuple[int, int], str] = {}

    @property
    def scorer(self) -> Scorer:
        """The scorer in use: the settings', or `words` when the embedder could not be loaded."""
        return "words" if self.notice is not None else self.settings.scorer

    def prepare(self, progress: Callable[[str], None] | None = None) -> str | None:
        """Load the embedder now (fetching it on first use, `progress` telling how that goes)
        rather than at the first recall, mid-reply; the notice when memory must match words only."""
        if self.settings.enabled and self.settings.scorer != "words":
            self._meaning(progress)
        return self.notice

    def _meaning(self, progress: Callable[[str], None] | None = None) -> MeaningIndex | None:
        # one load: `prepare` may run in a thread (the workbench) while a message asks for a recall
        with self._loading:
            if self.meaning is None and self.notice is None:
                try:
                    embedder = (self._load_embedder() if self._load_embedder is not None
                                else default_embedder(progress, self.settings.embedder))
                    self.meaning = MeaningIndex(embedder)
                except HaloError as exc:
                    self.notice = f"memory matches words only: {joined(exc.message, exc.hint)}"
        return self.meaning

    def archive(self, state: ConversationState, pruner: Pruner) -> tuple[PrunedSpans, list[int], list[str]]:
        """The pruned units with text in them (not a message's template alone): the spans, the
        indices of those with text, and their texts (whitespace made single). A unit's text never
        changes, so it is read from the state once."""
        spans = pruner.pruned_spans(state)
        if not len(spans):
            return spans, [], []
        template = state.column("template")[spans.positions]
        all_template = np.minimum.reduceat(template, spans.starts).astype(bool)
        keys = np.stack([spans.positions[spans.starts], np.r_[spans.starts[1:], spans.positions.size]
                         - spans.starts], axis=1).tolist()
        texts: dict[tuple[int, int], str] = {}
        kept: list[int] = []
        out: list[str] = []
        for i, (first, size) in enumerate(keys):
            if all_template[i]:
                continue
            key = (first, size)
            text = self._texts.get(key)
            if text is None:
                text = " ".join(state.text(spans.unit(i)).split())
            texts[key] = text
            if text:
                kept.append(i)
                out.append(text)
        self._texts = texts
        return spans, kept, out

    def keep_up(self, state: ConversationState, pruner: Pruner) -> None:
        """Index and embed what was archived since the last query, so the next message's recall
        embeds only the message. The chat calls it once a reply is in and pruned: the cost falls
        while the person reads and types, not between their message and the reply. It never loads
        the embedder (`prepare` does)."""
        s = self.settings
        if not s.enabled or s.max_recalled == 0:
            return
        _spans, _units, texts = self.archive(state, pruner)
        if s.scorer != "words" and self.meaning is not None:
            self.meaning.add(texts)
            if s.reply_with_question:
                self.meaning.add(question_pairs(texts, replies(questions(texts))))
            if s.keep_in_context:  # the context's sentences too: the next message matches them
                content = ~state.column("template") & (state.column("role") != ROLES.index("system"))
                self.meaning.add(self.context_units(state, pruner, state.active_mask() & content)[1])
        if texts and (s.scorer != "meaning" or self.meaning is None):
            self.words.sync(texts)

    def candidates(self, state: ConversationState, pruner: Pruner, query: str) -> list[Match]:
        """The archived sentences `query` may bring back, best first, at most `max_recalled`."""
        s = self.settings
        if not s.enabled or s.max_recalled == 0:
            return []
        spans, units, texts = self.archive(state, pruner)
        if not texts or not query.strip():
            return []
        similarity: npt.NDArray[np.float64] | None = None
        meaning = self._meaning() if s.scorer != "words" else None
        names: tuple[str, ...] = ()
        asks = questions(texts)
        paired = np.zeros(len(texts), bool)
        if meaning is not None:
            similarity = meaning.similarities(texts, query, s.name_discount)
            if s.reply_with_question:
                similarity, paired = with_questions(meaning, texts, asks, query, s.name_discount, similarity)
            names = tuple(query_names(query)) if s.name_discount else ()
        relevance = np.zeros(len(texts), np.float64)
        if s.scorer != "meaning" or meaning is None:  # meaning alone needs no word index
            self.words.sync(texts)
            relevance = self.words.scores(texts, query)
        chosen, by_meaning, by_words = decide(s if meaning is not None else s.model_copy(update={"scorer": "words"}),
                                              relevance, similarity, asks)
        return [Match(pruner.pruned_event(state, spans, units[i]),
                      tuple(n for n, hit in (("meaning", by_meaning[i]), ("words", by_words[i])) if hit),
                      float(relevance[i]), None if similarity is None else float(similarity[i]),
                      tuple(self.words.matched_words(texts[i], query)) if relevance[i] > 0 else (),
                      names, texts[i - 1] if paired[i] else None)
                for i in chosen.tolist()]

    def in_context(self, state: ConversationState, pruner: Pruner, query: str,
                   recalls: Sequence[Recall] = ()) -> list[Match]:
        """The sentences still in the context that `query` matches by meaning, best first, at most
        `keep_in_context`: those the pruner may take (not protected, not in `recalls`), by the
        threshold, names discount and question rule of the archive's (a reply is matched alone)."""
        s = self.settings
        if not s.enabled or s.keep_in_context == 0 or s.scorer == "words" or not query.strip():
            return []
        meaning = self._meaning()
        if meaning is None:
            return []
        candidates = state.active_mask() & ~pruner.protected_mask(state) & ~state.column("template")
        for r in recalls:
            candidates[np.asarray(r.event.positions, np.int64)] = False
        units, shown = self.context_units(state, pruner, candidates)
        if not shown:
            return []
        similarity = meaning.similarities(shown, query, s.name_discount)
        may = similarity >= s.min_similarity
        if not s.recall_questions:
            may &= ~questions(shown)
        chosen = [i for i in np.argsort(-similarity, kind="stable").tolist() if may[i]][: s.keep_in_context]
        names = tuple(query_names(query)) if s.name_discount else ()
        key, turn = pruner.settings.granularity, state.column("turn")
        return [Match(PruneEvent(key, int(state.column(key)[units[i][0]]), int(turn[units[i][0]]),
                                 tuple(int(p) for p in units[i]), math.nan, 0, shown[i]),
                      ("meaning",), 0.0, float(similarity[i]), (), names)
                for i in chosen]

    def context_units(self, state: ConversationState, pruner: Pruner, mask: npt.NDArray[np.bool_]
                      ) -> tuple[list[npt.NDArray[np.int64]], list[str]]:
        """The units (the pruner's) of the positions in `mask` that hold text: their positions and
        texts (whitespace made single)."""
        positions = np.flatnonzero(mask)
        if not positions.size:
            return [], []
        starts = unit_starts(state.column(pruner.settings.granularity)[positions], positions)
        units, texts = [], []
        for unit in np.split(positions, starts[1:]):
            text = " ".join(state.text(unit).split())
            if text:
                units.append(unit)
                texts.append(text)
        return units, texts

    def recall(self, state: ConversationState, pruner: Pruner, query: str) -> list[Recall]:
        """Restore the archived sentences `query` asks for and mark them recalled at the current
        turn, then add the matches still in the context (`in_context`, `Recall.kept`); the caller
        prunes next, protecting `protected_positions(recalls)`."""
        recalls = []
        turn = len(state.turns) - 1
        for match in self.candidates(state, pruner, query):
            restored = pruner.restore(state, match.event)
            state.mark_recalled(np.asarray(match.event.positions, np.int64), turn=turn)
            recalls.append(Recall(restored, query, match))
        recalls += [Recall(match.event, query, match, kept=True) for match in self.in_context(state, pruner, query,
                                                                                               recalls)]
        return recalls


def protected_positions(state: ConversationState, recalls: list[Recall]) -> npt.NDArray[np.bool_]:
    """A mask over `state` of the recalled sentences: the prune right after must keep them."""
    mask = np.zeros(len(state), bool)
    for r in recalls:
        mask[np.asarray(r.event.positions, np.int64)] = True
    return mask


def prune_keeping(pruner: Pruner, state: ConversationState, budget: int, recalls: list[Recall], *,
                  scores: npt.NDArray[np.floating] | None = None, ranked_by: RankedBy | None = None
                  ) -> PruneResult:
    """Prune to `budget` keeping what was just recalled; if it does not fit beside the rest of
    the protected content (the system prompt, the newest message), it goes again."""
    protect = protected_positions(state, recalls) if recalls else None
    result = pruner.prune(state, budget, scores=scores, protect=protect, ranked_by=ranked_by)
    if result.over_budget and protect is not None:
        again = pruner.prune(state, budget, scores=scores, ranked_by=ranked_by)
        result.events += again.events
        result.active_after, result.over_budget = again.active_after, again.over_budget
    return result
