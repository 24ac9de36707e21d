"""What memory's recall step costs per message, on an archive of a given size.

A chat of `sentences` archived sentences (varied, made up from the conversation generator's
pieces) is pruned down to `context_tokens` in the context; then, message after message, two more
sentences are archived and memory answers the new message, as in a long chat. Each scorer (`words`,
`meaning`, `hybrid`) keeps its own warm `Memory` (word index and embeddings kept between
messages: only what is new is indexed and embedded), and the scorers take turns message by
message, so a busy machine slows them alike; the figures are medians over the messages. Two
are timed apart, as the chat runs them: bringing the index and embeddings in step after the
prune that ends a reply (`Memory.keep_up`: the two new sentences), and the recall step between
a message and its reply: the search of the archive (`Memory.candidates`: the message, and the
product over the archive) and the match against the sentences still in the context
(`Memory.in_context`), both as `Memory.recall` runs them.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from halo_client.config import DEFAULT_SYSTEM_PROMPT
from halo_client.conversation.memory import Embedder, Memory, MemorySettings, Scorer
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.state import ConversationState
from halo_client.evaluation.conversations import DISTRACTORS, NAMES, PETS
from halo_client.testing import MockBackend

_SUBJECTS = ("my sister", "the plumber", "our neighbour", "my manager", "the vet", "my cousin", "the landlord")
_VERBS = ("said", "thinks", "promised", "told me", "wrote", "mentioned", "forgot")


def _sentence(rng: random.Random) -> str:
    return (f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} that {rng.choice(NAMES)} would bring "
            f"{rng.choice(PETS)} on day {rng.randint(1, 9999)}.")


def _tokens(backend: MockBackend, text: str, special: bool = False) -> list[tuple[int, bytes]]:
    return [(t, backend.token_bytes(t)) for t in backend.tokenize(text, special)]


def _message(state: ConversationState, backend: MockBackend, role: str, text: str) -> None:
    state.add_message(role, _tokens(backend, text), _tokens(backend, f"<|im_start|>{role}\n", True),  # type: ignore[arg-type]
                      _tokens(backend, "<|im_end|>\n", True))


def recall_cost(embedder: Embedder, *, sentences: int = 2000, context_tokens: int = 2000, messages: int = 20,
                scorers: Sequence[Scorer] = ("words", "meaning", "hybrid"), seed: int = 0) -> dict[str, Any]:
    """Milliseconds per message (median) of memory's recall step (the archive's search and the
    context's match), of the context's match alone, and of keeping up after each reply, for
    each scorer."""
    rng = random.Random(seed)
    backend = MockBackend(max_context_length=1 << 20)
    state = ConversationState()
    _message(state, backend, "system", DEFAULT_SYSTEM_PROMPT)
    per_message = 8
    pruner = Pruner(PrunerSettings(protect_exchanges=0, recent_share=0.0))
    while len(pruner.pruned_units(state)) + per_message <= sentences:
        _message(state, backend, "user", " ".join(_sentence(rng) for _ in range(per_message)))
        _message(state, backend, "assistant", "Noted.")
        pruner.prune(state, context_tokens)
    memories = {s: Memory(MemorySettings(scorer=s, max_recalled=1), embedder=embedder) for s in scorers}
    times: dict[str, list[float]] = {s: [] for s in scorers}
    in_context: dict[str, list[float]] = {s: [] for s in scorers}
    keeping: dict[str, list[float]] = {s: [] for s in scorers}
    for m in range(messages + 1):
        query = DISTRACTORS[rng.choice(list(DISTRACTORS))](rng)
        for scorer in (scorers if m % 2 else scorers[::-1]):
            started = time.perf_counter()
            memories[scorer].candidates(state, pruner, query)
            searched = time.perf_counter()
            memories[scorer].in_context(state, pruner, query)
            if m:  # the first message warms every memory up (the whole archive indexed and embedded once)
                times[scorer].append((time.perf_counter() - started) * 1e3)
                in_context[scorer].append((time.perf_counter() - searched) * 1e3)
        _message(state, backend, "user", f"{_sentence(rng)} {_sentence(rng)}")
        _message(state, backend, "assistant", "Noted.")
        pruner.prune(state, context_tokens)
        for scorer in (scorers if m % 2 else scorers[::-1]):
            started = time.perf_counter()
            memories[scorer].keep_up(state, pruner)
            if m < messages:
                keeping[scorer].append((time.perf_counter() - started) * 1e3)
    return {"archived": len(pruner.pruned_units(state)), "context_tokens": state.active_count,
            "messages": messages, "load_average": round(os.getloadavg()[0], 1),
            "ms_per_message": {s: round(statistics.median(t), 1) for s, t in times.items()},
            "ms_p90": {s: round(float(np.percentile(t, 90)), 1) for s, t in times.items()},
            "ms_in_context": {s: round(statistics.median(t), 1) for s, t in in_context.items()},
            "ms_keeping_up": {s: round(statistics.median(t), 1) for s, t in keeping.items()}}
