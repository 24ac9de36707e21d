"""What memory brings back, how many, at what threshold: the settings a chat, a session file and
the settings file carry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: how archived sentences are matched to the newest message: `words` (BM25), `meaning` (sentence
#: embeddings) or `hybrid` (both, their orders fused; either can bring a sentence back)
Scorer = Literal["words", "meaning", "hybrid"]
#: the sentence embedders `meaning` and `hybrid` can use (`halo_client.embedding.MODELS`)
EmbedderName = Literal["all-MiniLM-L6-v2", "all-mpnet-base-v2", "all-mpnet-base-v2-int8"]


class MemorySettings(BaseModel):
    """The defaults are the pruning benchmark's choice on its tuning split, generated chats and
    chats written by hand (docs/pruning.md): among the three scorers, their thresholds, and whether
    sentences that ask may come back at all, the most sentences holding the fact a question asks
    for, less 0.15 for every other sentence brought back (for a question, or for a message that
    asks for nothing); then, replayed end to end, how many may come back: of three, four and five,
    the lowest answer NLL increase at 25 % whose KL at 50 % is not significantly worse. The
    embedder was chosen the same way, end to end (docs/pruning.md, "The embedder")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    scorer: Scorer = "meaning"
    #: the sentence embedder: all-mpnet-base-v2-int8 (404 MB, fetched once; its products in int8, the
    #: recall step about 36 ms per message on two cores in ONNX Runtime; without ONNX Runtime the
    #: same model runs exactly in numpy, about 90 ms), all-mpnet-base-v2 (the same files in float32:
    #: about 70 ms) or all-MiniLM-L6-v2 (83 MB, about 16 ms, finds less of what a question asks in
    #: other words; docs/pruning.md, "The embedder")
    embedder: EmbedderName = "all-mpnet-base-v2-int8"
    #: sentences restored per message at most: the fact a question asks for is among meaning's
    #: best few far more often than it is the best, and the similarity threshold, not this cap,
    #: decides most messages (docs/pruning.md)
    max_recalled: int = Field(5, ge=0)
    #: BM25 relevance a sentence needs to come back by its words (FTS5's bm25(), sign flipped:
    #: higher matches better)
    min_relevance: float = Field(0.0, ge=0)
    #: cosine similarity (-1 to 1) a sentence needs to come back by its meaning
    min_similarity: float = Field(0.30, ge=-1, le=1)
    #: how much of a sentence's similarity to the message's names alone is taken off its
    #: similarity (0: none, 1: all): a name says whom a question is about, and sentences that
    #: are little more than the name ("Wow, Gina!") are otherwise its nearest. Half was chosen
    #: on the first half of the LoCoMo conversations (docs/pruning.md, "Names in a question")
    name_discount: float = Field(0.5, ge=0, le=1)
    #: with `hybrid`, a sentence that comes back by its words needs at least this similarity too:
    #: one shared word ("fun") in sentences about different things is not a match
    min_similarity_with_words: float = Field(0.0, ge=-1, le=1)
    #: whether a sentence that is itself a question may come back. A later question asks for what
    #: was answered, not for what was asked, and an earlier question in the same words was
    #: memory's most frequent wrong match on the tuning chats written by hand
    recall_questions: bool = False
    #: whether a reply right after an archived question is matched as the pair too, question
    #: first, its similarity the better of the two: "The Minnesota Wolves!" says little alone, and
    #: a later question ("Which team does Gina follow?") is about what it answered. Replayed on the
    #: tuning split and the first half of LoCoMo, it answered better at 25 % (docs/pruning.md,
    #: "A reply and its question")
    reply_with_question: bool = True
    #: how many of the message's best matches by meaning still in the context (at `min_similarity`,
    #: questions out, the names discounted) the prune that follows keeps, beside what comes back:
    #: at the first prune nothing is archived yet, and the pruner's score alone would choose what
    #: the question asks for. Replayed on the tuning split, three answered better at 25 % than none
    #: and than sharing `max_recalled` with what comes back (docs/pruning.md, "What is still there")
    keep_in_context: int = Field(3, ge=0)
