"""The chat prunes by the newest message's attention in the model's retrieval heads (the product
default, `PrunerSettings.score = "question"`): a one-token recall pass before a reply that prunes,
its frame 0 ranking what stays; brightness where that cannot be had."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from halo_client.cli.render import prune_line
from halo_client.client import KoboldClient
from halo_client.conversation import Chat, PrunerSettings
from halo_client.conversation import chat as chat_module
from halo_client.conversation.pruner import summary
from halo_client.conversation.question import RETRIEVAL_HEADS, heads_for
from halo_client.testing import MockBackend, MockKoboldServer
from halo_client.ui.page_messages import pruned_json

FACT = "My locker code is 4821."
FILLER = ["The weather is grey today.", "I had soup for lunch.", "The train was late again.",
          "My neighbour plays the piano.", "We painted the hallway."]


@pytest.fixture
def mock_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock model gets retrieval heads, as if the benchmark had chosen them for it."""
    monkeypatch.setitem(RETRIEVAL_HEADS, ("halo-mock", 4, 4), ((3, 1), (2, 0)))


def favour(text: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the heads' vote favour the sentence holding `text` (the mock's attention is a toy):
    returns the lengths of the frames the vote saw."""
    seen: list[int] = []

    def vote(values: npt.NDArray[np.floating], heads: object, content: npt.NDArray[np.bool_]) -> npt.NDArray[
            np.float64]:
        seen.append(values.shape[-1])
        return np.zeros(values.shape[-1], np.float64)

    monkeypatch.setattr(chat_module, "head_vote", vote)
    original = Chat.question_scores

    async def scores(self: Chat, prefix_tokens: object, suffix_tokens: int = 0) -> npt.NDArray[np.float64] | None:
        out = await original(self, prefix_tokens, suffix_tokens)  # type: ignore[arg-type]
        if out is not None:
            sentence = self.state.column("sentence")
            for s in np.unique(sentence[self.state.active_positions()]).tolist():
                if text in self.state.text(np.flatnonzero(sentence == s)):
                    out[sentence == s] = 10.0
        return out

    monkeypatch.setattr(Chat, "question_scores", scores)
    return seen


async def chat_over_budget(backend: MockBackend, budget: int, **pruner: object) -> tuple[Chat, list[int]]:
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Be brief.", max_length=8, sampler={"temperature": 0},
                               pruner=PrunerSettings(max_context_tokens=budget, recent_share=0.5, **pruner))
        sizes = []
        for text in [FACT, *FILLER]:
            await chat.add_message("user", text)
            before = len(backend.received)
            await chat.reply()
            sizes.append(len(backend.received) - before)
        return chat, sizes


async def test_a_prune_is_ranked_by_the_question_pass(mock_heads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = favour("4821", monkeypatch)
    backend = MockBackend()
    chat, requests = await chat_over_budget(backend, 150)
    assert chat.question_heads == ((3, 1), (2, 0)) and chat.pruner.settings.score == "question"
    assert 2 in requests  # a reply that pruned sent the recall pass first
    assert seen and all(n > 0 for n in seen)
    # the fact, the oldest sentence, outlived newer ones: the question's ranking kept it
    assert "4821" in chat.state.text(chat.state.active_positions())
    gone = [e.text for e in chat.pruner.pruned_units(chat.state)]
    assert gone and not any("4821" in t for t in gone)
    # the pass runs whenever a prune may fall due, before the reply or once it has joined the
    # chat, so the question ranked every prune; every prune line says so
    units = chat.pruner.pruned_units(chat.state)
    assert units and {e.ranked_by for e in units} == {"question"}
    assert prune_line(units[0]).startswith(f"sentence {units[0].unit} (question's attention ")
    assert "question's attention" in summary(units)
    assert "question's attention" in {u["ranked_by"] for u in pruned_json(chat)}


async def test_brightness_ranks_when_the_question_cannot(mock_heads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    favour("4821", monkeypatch)
    chat, requests = await chat_over_budget(MockBackend(), 150, score="brightness")
    assert set(requests) == {1}  # no recall pass: the tracker's brightness ranked every prune
    units = chat.pruner.pruned_units(chat.state)
    assert units and {e.ranked_by for e in units} == {"brightness"}
    assert "(brightness " in prune_line(units[0])


async def test_a_model_without_known_heads_gets_no_pass() -> None:
    chat, requests = await chat_over_budget(MockBackend(), 150)
    assert chat.question_heads is None and set(requests) == {1}


def test_the_heads_are_known_for_the_reference_model() -> None:
    from halo_client.messages import AttentionSupport, ModelInfo

    def info(name: str, layers: int) -> ModelInfo:
        return ModelInfo(model_name=name, architecture="llama", vocab_size=49152, num_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, hidden_size=576, max_context_length=2048,
                         max_trained_context=8192, bos_token_id=1, eos_token_id=2, eot_token_id=None,
                         rope_freq_base=10000.0, rope_freq_scale=1.0, chat_template=None, attention_api_version=1,
                         attention=AttentionSupport(available=True, reason=None, dtypes=["float32"], layouts=["full"]))

    assert heads_for(info("SmolLM2-135M-Instruct.Q4_1", 30)) == ((22, 4), (23, 2), (15, 6), (21, 8), (22, 7))
    assert heads_for(info("SmolLM2-135M-Instruct.Q4_1", 24)) is None  # same name, another shape: not its heads
    assert heads_for(info("gemma-3-270m", 30)) is None


@pytest.mark.model
async def test_the_recall_pass_on_the_reference_model() -> None:
    """SmolLM2 on the reference server: frame 0 of a one-token generation, in the full layout, gives
    the retrieval heads' vote over every position of the request; the reply that follows prunes by it."""
    from halo_client.reference import load_backend
    from halo_client.serving.server import ContractServer

    backend = load_backend(quiet=True, n_ctx=2048)
    async with ContractServer(backend, port=0) as server, KoboldClient(server.url, timeout=300) as client:
        chat = await Chat.open(client, system="Be brief.", max_length=4, sampler={"temperature": 0},
                               pruner=PrunerSettings(max_context_tokens=70))
        assert chat.question_heads == heads_for(chat.info) is not None
        for text in ("By the way, my locker code is 4821.", "The weather is grey. I had soup for lunch.",
                     "The train was late again this morning."):
            await chat.add_message("user", text)
            await chat.reply()
        await chat.add_message("user", "Which digits open my locker?")
        prefix = await chat._tokens(chat.turns.plan_reply())
        scores = await chat.question_scores(chat.turns.reply_prefix(chat.turns.plan_reply(), prefix))
        assert scores is not None and scores.shape == (len(chat.state),)
        active = chat.state.active_positions()
        template = chat.state.column("template")
        assert (scores >= 0).all() and scores[active][~template[active]].max() > 0
        assert not scores[template].any()
        reply = await chat.reply()
        assert reply.pruned_before.events and chat.state.active_count <= 70 + 4
