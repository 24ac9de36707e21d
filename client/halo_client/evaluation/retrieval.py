"""Recall candidates side by side on the same archive: which earlier sentence does a message ask for?

For every played conversation the archive is every sentence of its history (user and assistant,
as the pruner cuts them), the most memory could ever hold; each later message is a query. A
question's gold is the sentences holding its fact (`policies.holds`); a fidelity probe asks for
nothing, so whatever a retriever would bring back for it is a false recall.

Retrievers, each giving every archived sentence a score for the query:

- `words`: BM25 (memory's `lexical`);
- `meaning`: cosine similarity of the default embedder's embeddings (memory's `semantic`), the
  message's names discounted as memory's default does; `meaning, names in full` without that;
- `hybrid`: the reciprocal-rank fusion of both (memory's `fusion`);
- `attention`: the model's own attention in a recall pass, InfiniRetri / retrieval-heads style:
  the archived sentences as notes in a system message, one per line, then the message and the
  reply's header; a sentence's score is the max over its tokens of the attention the message
  pays it, from all the message's rows (`rows="message"`) or from the last row alone
  (`rows="last"`: what the contract already streams as frame 0 of a one-token generation), in
  heads chosen on the tuning split (`choose_heads`).

What memory would bring back (`outcome`) is decided as memory decides it: with
`reply_with_question`, a reply to an archived question takes its pair's similarity with the
message where that is the better (the retrievers above score each sentence alone).

Costs: milliseconds per message (median, this process) and, for attention, the tokens the model
runs per message (the notes once per archive, then each message and header).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from halo_client.conversation.memory import MeaningIndex, MemorySettings, WordIndex
from halo_client.conversation.memory.fusion import reciprocal_rank_fusion
from halo_client.conversation.memory.recall import decide, question_pairs, questions, replies, with_questions
from halo_client.conversation.memory.semantic import Embedder
from halo_client.conversation.question import head_vote
from halo_client.conversation.state import ROLES
from halo_client.conversation.turns import Part, Tokens
from halo_client.evaluation.conversations import Fact
from halo_client.evaluation.dialog import Dialog, Rows
from halo_client.evaluation.model import InProcessModel
from halo_client.evaluation.policies import holds

F32 = npt.NDArray[np.float32]
NOTES_HEADER = "Earlier in this conversation:\n"


@dataclass
class Query:
    step: int
    kind: str
    wording: str
    text: str
    #: over the archive: the sentences holding the question's fact (none for a fidelity probe)
    gold: npt.NDArray[np.bool_]
    #: per `Rows`: `[layers, heads, sentences]` attention scores from the recall pass
    attention: dict[Rows, F32] = field(default_factory=dict)
    #: tokens the recall pass ran for this query beyond the shared notes
    tokens: int = 0
    #: BM25 relevance and similarity of every archived sentence (`match_scores`)
    relevance: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    similarity: npt.NDArray[np.float64] | None = None
    #: the similarity with the message's names not discounted (`MemorySettings.name_discount` 0)
    similarity_names_in_full: npt.NDArray[np.float64] | None = None
    #: `similarity` with each reply to an archived question raised to its pair's with that question
    #: where the pair matches better (`MemorySettings.reply_with_question`, as memory does)
    similarity_with_question: npt.NDArray[np.float64] | None = None
    #: milliseconds per scorer for this query
    ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Archive:
    conversation: str
    split: str
    texts: list[str]
    queries: list[Query]
    #: tokens of the notes (the system message), run once per archive
    note_tokens: int = 0

    @cached_property
    def asks(self) -> npt.NDArray[np.bool_]:
        """Which archived sentences are questions (memory brings those back only if told to)."""
        return questions(self.texts)


def archive_of(dialog: Dialog) -> Archive:
    """Every content sentence of the history, and a query per later message."""
    state = dialog.history_state()
    content = ~state.column("template") & (state.column("role") != ROLES.index("system"))
    sentence = state.column("sentence")
    texts = [" ".join(state.text(np.flatnonzero(content & (sentence == s))).split())
             for s in np.unique(sentence[content]).tolist()]
    queries = []
    for k, step in enumerate(dialog.tail):
        fact: Fact | None = step.step.fact
        gold = np.asarray([fact is not None and holds(t, fact) for t in texts], bool)
        queries.append(Query(k, step.step.kind, fact.wording if fact is not None else "", step.step.text, gold))
    return Archive(dialog.conversation.name, dialog.conversation.split, texts, queries)


def _note_spans(model: InProcessModel, texts: Sequence[str]) -> tuple[Tokens, list[tuple[int, int]]]:
    tokens: Tokens = model.tokens(Part(NOTES_HEADER, False))
    spans = []
    for text in texts:
        start = len(tokens)
        tokens += model.tokens(Part(text + "\n", False))
        spans.append((start, len(tokens)))
    return tokens, spans


def attention_pass(model: InProcessModel, archive: Archive) -> None:
    """The recall pass for every query of `archive`: fills `Query.attention` and the token counts.
    The notes are the shared prefix, so each query after the first runs only its own tokens."""
    if not archive.texts:
        return
    notes, spans = _note_spans(model, archive.texts)
    for query in archive.queries:
        turns = model.builder()
        system = turns.plan_message("system", NOTES_HEADER + "\n".join(archive.texts))
        prefix, content, suffix = turns.message_tokens(
            system, [model.tokens(system.prefix), notes, model.tokens(system.suffix)], first=True)
        turns.history.append({"role": "system", "content": system.content})
        user = turns.plan_message("user", query.text)
        u_prefix, u_content, u_suffix = turns.message_tokens(user, [model.tokens(p) for p in user.parts], first=False)
        turns.history.append({"role": "user", "content": query.text})
        header = turns.reply_prefix(turns.plan_reply(), model.tokens(turns.plan_reply()))
        ids = [t for t, _ in prefix + content + suffix + u_prefix + u_content + u_suffix + header]
        rows = len(u_content) + len(u_suffix) + len(header)
        _logits, attention = model.rows(ids, rows, True)
        assert attention is not None
        offset = len(prefix)
        starts = np.asarray([offset + a for a, _b in spans])
        region = slice(int(starts[0]), offset + spans[-1][1])
        picked: dict[Rows, F32] = {"message": attention.mean(axis=2), "last": attention[:, :, -1]}
        for name, values in picked.items():
            query.attention[name] = np.maximum.reduceat(values[..., region], starts - starts[0], axis=-1)
        query.tokens = len(u_prefix) + len(u_content) + len(u_suffix) + len(header)
        archive.note_tokens = len(prefix) + len(content) + len(suffix)


def match_scores(archive: Archive, embedder: Embedder | None) -> None:
    """Each query's BM25 relevance and (with an embedder) similarity over the archive, and the
    milliseconds each took (the archive's embeddings are made before the message arrives, as
    memory keeps them between messages)."""
    index = WordIndex()
    index.sync(archive.texts)
    meaning = MeaningIndex(embedder) if embedder is not None else None
    if meaning is not None:
        meaning.add(archive.texts)
        meaning.add(question_pairs(archive.texts, replies(archive.asks)))
    discount = MemorySettings().name_discount
    for query in archive.queries:
        started = time.perf_counter()
        query.relevance = index.scores(archive.texts, query.text)
        query.ms["words"] = (time.perf_counter() - started) * 1e3
        if meaning is not None:
            started = time.perf_counter()
            query.similarity = meaning.similarities(archive.texts, query.text, discount)
            query.ms["meaning"] = (time.perf_counter() - started) * 1e3
            started = time.perf_counter()
            query.similarity_with_question, _paired = with_questions(
                meaning, archive.texts, archive.asks, query.text, discount, query.similarity)
            query.ms["question pairs"] = (time.perf_counter() - started) * 1e3
            query.similarity_names_in_full = meaning.similarities(archive.texts, query.text)
    index.close()


def choose_heads(archives: Sequence[Archive], rows: Rows, count: int) -> list[tuple[int, int]]:
    """The `count` heads whose own top sentence is a question's gold most often over the tuning
    archives' questions (ties: the higher mean reciprocal rank of the first gold sentence)."""
    hits: npt.NDArray[np.float64] | None = None
    mrr: npt.NDArray[np.float64] | None = None
    for archive in archives:
        for q in archive.queries:
            if q.kind != "question" or not q.gold.any() or rows not in q.attention:
                continue
            scores = q.attention[rows]  # [layers, heads, sentences]
            hit = q.gold[scores.argmax(axis=-1)].astype(np.float64)
            rank = (scores > scores[..., q.gold].max(axis=-1, keepdims=True)).sum(axis=-1) + 1
            hits = hit if hits is None else hits + hit
            mrr = 1.0 / rank if mrr is None else mrr + 1.0 / rank
    if hits is None or mrr is None:
        return []
    order = np.lexsort((-mrr.ravel(), -hits.ravel()))[:count]
    heads = hits.shape[1]
    return [(int(i // heads), int(i % heads)) for i in order]


#: the retrievers compared, by name
RETRIEVERS = ("words", "meaning", "meaning, names in full", "hybrid", "attention (message rows)",
              "attention (last row)", "hybrid + attention")


def retriever_scores(query: Query, heads: dict[Rows, list[tuple[int, int]]]) -> dict[str, npt.NDArray[np.float64]]:
    """Every retriever's scores over the archive for `query` (those it has what they need for)."""
    out = {"words": query.relevance}
    everything = np.ones(len(query.relevance), bool)
    if query.similarity is not None:
        out["meaning"] = query.similarity
        if query.similarity_names_in_full is not None:
            out["meaning, names in full"] = query.similarity_names_in_full
        out["hybrid"] = reciprocal_rank_fusion([query.relevance, query.similarity], [query.relevance > 0, everything])
    names: dict[Rows, str] = {"message": "attention (message rows)", "last": "attention (last row)"}
    for rows, name in names.items():
        chosen = heads.get(rows)
        if chosen and rows in query.attention:
            out[name] = head_vote(query.attention[rows], chosen)
    if "hybrid" in out and "attention (message rows)" in out:
        out["hybrid + attention"] = reciprocal_rank_fusion(
            [query.relevance, out["meaning"], out["attention (message rows)"]], [query.relevance > 0, everything,
                                                                                everything])
    return out


def top1(scores: npt.NDArray[np.float64], gold: npt.NDArray[np.bool_]) -> float:
    """1 when the best-scoring sentence holds the fact (ties: the first)."""
    return float(gold[int(np.argmax(scores))]) if scores.size else 0.0


def outcome(settings: MemorySettings, query: Query, asks: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """What memory with `settings` would bring back for `query` from the whole archive, whose
    questions are `asks`: (sentences holding the question's fact, sentences in all)."""
    similarity = None if settings.scorer == "words" else (
        query.similarity_with_question if settings.reply_with_question and query.similarity_with_question is not None
        else query.similarity)
    chosen, _m, _w = decide(settings, query.relevance, similarity, asks)
    return int(query.gold[chosen].sum()), int(chosen.size)


def memory_grid() -> list[MemorySettings]:
    """The settings memory's match is tuned over: each scorer, its thresholds, and whether
    questions may come back, for the one best sentence; how many come back is chosen end to end
    (the benchmark's `choose_count`): the answer a sentence more buys is not a count of facts."""
    grid = [MemorySettings(scorer="words", max_recalled=1, min_relevance=r) for r in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)]
    grid += [MemorySettings(scorer="meaning", max_recalled=1, min_similarity=t)
             for t in (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)]
    grid += [MemorySettings(scorer="hybrid", max_recalled=1, min_similarity=t, min_relevance=r,
                            min_similarity_with_words=w)
             for t in (0.3, 0.35, 0.4, 0.45, 0.5, 0.6) for r in (0.0, 2.0, 4.0) for w in (0.0, 0.1, 0.2, 0.3)]
    return [s.model_copy(update={"recall_questions": q}) for q in (False, True) for s in grid]


#: what a sentence brought back that holds no fact (for a question, or a false recall for a message
#: that asks for nothing) costs, against a sentence holding the fact a question asks for. Replayed
#: end to end on the tuning split (generated and by hand), memory's thresholds 0.30-0.45 cost the
#: same KL while the answer NLL at 25 % fell with the threshold (docs/pruning.md): a wrong sentence
#: takes room, a missed fact takes the answer. all-MiniLM-L6-v2 picks 0.30 at any weight up to 0.30;
#: all-mpnet-base-v2-int8 picks 0.30 up to 0.15 and 0.35 above, and replayed end to end 0.30 answered
#: better, on the tuning split and on twelve chats written to decide it (docs/pruning.md, "The embedder")
WRONG_COST = 0.15


def choose_memory(archives: Sequence[Archive], grid: Sequence[MemorySettings],
                  wrong_cost: float = WRONG_COST) -> tuple[MemorySettings, float]:
    """The settings with the most sentences holding a question's fact brought back, less
    `wrong_cost` for every sentence brought back that holds none (for a question or a fidelity
    probe: a false recall), over the tuning archives; and that score per later message."""
    queries = [(q, a.asks) for a in archives for q in a.queries]
    best, best_score = MemorySettings(), -np.inf
    for settings in grid:
        score = 0.0
        for q, asks in queries:
            hits, total = outcome(settings, q, asks)
            score += hits - wrong_cost * (total - hits)
        if score > best_score:
            best, best_score = settings, score
    return best, float(best_score / max(len(queries), 1))


def _timed(settings: MemorySettings) -> tuple[str, ...]:
    """The steps (`Query.ms`) memory with `settings` takes between a message and its reply."""
    meaning = ("meaning", "question pairs") if settings.reply_with_question else ("meaning",)
    if settings.scorer == "words":
        return ("words",)
    return meaning if settings.scorer == "meaning" else ("words", *meaning)


def study_rows(archive: Archive, set_name: str, heads: dict[Rows, list[tuple[int, int]]],
               memories: dict[str, MemorySettings]) -> list[dict[str, object]]:
    """The study's rows for one archive: per question and retriever, top-1; per later message and
    memory setting, what would come back (`hits`, `recalled`)."""
    rows: list[dict[str, object]] = []
    base = {"set": set_name, "conversation": archive.conversation, "sentences": len(archive.texts)}
    asks = archive.asks
    for q in archive.queries:
        where = {**base, "step": q.step, "kind": q.kind, "wording": q.wording}
        if q.kind == "question" and q.gold.any():
            for name, scores in retriever_scores(q, heads).items():
                rows.append({**where, "retriever": name, "top1": top1(scores, q.gold)})
        for name, settings in memories.items():
            hits, total = outcome(settings, q, asks)
            rows.append({**where, "memory": name, "hits": hits, "recalled": total,
                         "false": total - hits, "ms": sum(q.ms.get(k, 0.0) for k in _timed(settings))})
        if q.tokens:
            rows.append({**where, "attention_tokens": q.tokens + archive.note_tokens})
    return rows
