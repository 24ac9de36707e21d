"""Memory: pruned is not gone. The newest user message brings back the pruned sentences it asks for.

The archive is the conversation's own pruned sentences (`Pruner.pruned_units`: the audit trail of
the state, so a saved session carries it with no extra file). One module per concept:

- `settings`: what comes back, how many, at what threshold (`MemorySettings`);
- `lexical`: matching by words, BM25 over SQLite's FTS5 (`WordIndex`, `relevance`);
- `semantic`: matching by meaning, sentence-embedding similarity (`MeaningIndex`);
- `fusion`: one order from both (reciprocal-rank fusion);
- `recall`: the query, the decision and the restore, with the reason each sentence came back
  (`Memory`, `Recall.why`); and the message's matches still in the context, kept through the
  prune that follows (`Memory.in_context`).

What it buys, measured on held-out conversations, is in docs/pruning.md.
"""

from halo_client.conversation.memory.lexical import STOP_WORDS, WordIndex, content_terms, relevance
from halo_client.conversation.memory.recall import Match, Memory, Recall, protected_positions, prune_keeping
from halo_client.conversation.memory.semantic import Embedder, MeaningIndex
from halo_client.conversation.memory.settings import EmbedderName, MemorySettings, Scorer

__all__ = ["STOP_WORDS", "Embedder", "EmbedderName", "Match", "MeaningIndex", "Memory", "MemorySettings", "Recall",
           "Scorer", "WordIndex", "content_terms", "protected_positions", "prune_keeping", "relevance"]
