"""One turn protocol: the live chat and the benchmark send the model the same token ids.

Both drive `TurnBuilder`; the chat tokenizes through a real server over sockets, the benchmark in
process. Greedy decoding without a repetition penalty makes the chat's replies the model's argmax,
as the benchmark's are, so the two conversations must be identical token for token — on a model
whose tokenizer adds a plain `<s>` BOS (the tiny SentencePiece llama) and on SmolLM2, whose BOS is
its `<|im_start|>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from halo_client.client import KoboldClient
from halo_client.conversation.chat import Chat
from halo_client.evaluation.conversations import Conversation, Message
from halo_client.evaluation.dialog import play
from halo_client.evaluation.model import InProcessModel
from halo_client.reference import ReferenceBackend
from halo_client.reference.tiny_model import write_tiny_llama
from halo_client.serving.server import ContractServer
from halo_client.testing.threaded import ServerThread

USER_TURNS = ("the cat sat in the sun.", "a cat? the cat in the hat!", "<|im_start|> is literal text here.")
CONVERSATION = Conversation(name="turns", split="report", system="You are terse.", messages=[
    m for text in USER_TURNS for m in (Message("user", text), Message("assistant", None))])
REPLY_TOKENS = 6


def _backend(kind: str, tmp: Path) -> ReferenceBackend:
    if kind == "bos":
        return ReferenceBackend(write_tiny_llama(tmp / "spm.gguf", tokenizer="llama", n_ctx=1024), n_ctx=1024)
    from halo_client.reference import default_model

    return ReferenceBackend(default_model(), n_ctx=1024)


@pytest.fixture(params=["bos", pytest.param("smollm2", marks=pytest.mark.model)])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(backend_kind: str, tmp_path: Path) -> Iterator[str]:
    backend = _backend(backend_kind, tmp_path)
    with ServerThread(lambda: ContractServer(backend, port=0)) as running:
        yield running.url


async def test_chat_and_benchmark_send_the_same_ids(server: str, backend_kind: str, tmp_path: Path) -> None:
    model = InProcessModel(_backend(backend_kind, tmp_path))
    dialog = play(CONVERSATION, model, reply_tokens=REPLY_TOKENS)
    played = dialog.history_state()
    async with KoboldClient(server, timeout=60) as client:
        chat = await Chat.open(client, system=CONVERSATION.system, max_length=REPLY_TOKENS,
                               sampler={"temperature": 0.0, "rep_pen": 1.0})
        requests = []
        for text in USER_TURNS:
            await chat.add_message("user", text)
            requests.append((await chat.reply()).input_ids)
    assert chat.state.input_ids() == played.input_ids()
    assert [r.role for r in chat.state.turns] == [r.role for r in played.turns]
    bos = model.info.bos_token_id
    ids = chat.state.input_ids()
    if backend_kind == "bos":
        # exactly one BOS, at the very start: later template parts had theirs stripped
        assert ids[0] == bos and ids.count(bos) == 1
    # each request is the conversation so far, through the reply's opening
    assert all(ids[: len(r)] == r for r in requests)
