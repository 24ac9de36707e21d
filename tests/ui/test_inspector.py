"""The inspector's full frame on demand equals the frame the token had when it was generated:
checked on the mock, on the reference server with a tiny real model, and (marked `model`) with
SmolLM2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from halo_client.client import KoboldClient, TokenEvent
from halo_client.conversation.state import ConversationState
from halo_client.serving.server import ContractServer
from halo_client.testing import MockBackend, MockKoboldServer
from halo_client.ui.inspector import ReplyRecord, ReplyRecords, fetch_frame, view
from tests.ui.conftest import Bench

PROMPT = "<|im_start|>user\nThe cat sat on the mat. Where is the cat?<|im_end|>\n<|im_start|>assistant\n"


async def generated_frames(client: KoboldClient, ids: list[int], n: int,
                           **sampler: float) -> tuple[list[int], list[npt.NDArray[np.float32]]]:
    tokens, frames = [], []
    async with client.generate_stream(ids, max_length=n, return_attention=True, attention_layout="full",
                                      **sampler) as stream:
        async for event in stream:
            if isinstance(event, TokenEvent):
                assert event.attention is not None
                tokens.append(event.token_id)
                frames.append(np.array(event.attention.values))
    return tokens, frames


async def check_on_demand_frames(url: str, n: int, atol: float, **sampler: float) -> int:
    async with KoboldClient(url, timeout=120) as client:
        ids = (await client.tokenize(PROMPT)).token_ids
        tokens, frames = await generated_frames(client, ids, n, **sampler)
        assert len(tokens) >= 3
        for i, frame in enumerate(frames):
            again = await fetch_frame(client, ids + tokens[:i])
            assert again.layout == "full" and again.values.shape == frame.shape
            np.testing.assert_allclose(again.values, frame, rtol=0, atol=atol, err_msg=f"token {i}")
        return len(tokens)


async def test_on_the_mock() -> None:
    async with MockKoboldServer(backend=MockBackend(num_layers=3, num_heads=5)) as server:
        await check_on_demand_frames(server.url, 12, 1e-6, temperature=0.0)


async def test_on_the_reference_server_with_a_tiny_model(tmp_path: Path) -> None:
    from halo_client.reference import ReferenceBackend
    from halo_client.reference.tiny_model import write_tiny_llama

    backend = ReferenceBackend(write_tiny_llama(tmp_path / "tiny.gguf"), n_ctx=256)
    async with ContractServer(backend, port=0) as server:
        # sampled at temperature 0.9: the frames depend only on the tokens, not on how they were chosen
        await check_on_demand_frames(server.url, 10, 2e-6, temperature=0.9, sampler_seed=3)


@pytest.mark.model
async def test_on_the_reference_server_with_smollm2() -> None:
    from halo_client.reference import ReferenceBackend

    backend = ReferenceBackend.load_default(n_ctx=512)
    async with ContractServer(backend, port=0) as server:
        assert await check_on_demand_frames(server.url, 8, 2e-5, temperature=0.0) >= 3


async def test_the_workbench_inspects_a_generated_token_over_its_own_columns(bench: Bench) -> None:
    await bench.say("The cat sat on the mat.")
    chat = bench.workbench.chat
    assert chat is not None
    first = min(t["position"] for t in bench.page.of("token"))
    third = first + 2
    answer = await bench.command(type="inspect", position=third, layer=None, head=None, scale="log")
    shown = answer.of("inspection")[0]
    record = bench.workbench.inspector.records.find(third)
    assert record is not None
    assert shown["positions"] == record[0].columns(2).tolist()  # request columns, then tokens 0 and 1
    assert shown["positions"][-2:] == [first, first + 1]
    assert abs(sum(shown["values"]) - 1.0) < 1e-4  # a mean of attention rows is a distribution
    assert (shown["layers"], shown["heads"]) == (4, 4)
    one = (await bench.command(type="inspect", position=third, layer=1, head=2, scale="linear")).of("inspection")[0]
    assert one["layer"] == 1 and one["head"] == 2 and max(one["buckets"]) == 63
    requests = len(bench.server.mock.received)
    await bench.command(type="inspect", position=third, layer=0, head=0, scale="log")
    assert len(bench.server.mock.received) == requests  # the frame is cached
    refused = await bench.command(type="inspect", position=1, scale="log")
    assert "only generated tokens" in refused.of("error")[0]["message"]


def test_view_scales_and_overview() -> None:
    state = ConversationState()
    state.add_message("user", [(5, b"a"), (6, b"b"), (7, b"c")], [(1, b"<s>")], [(2, b"</s>")])
    values = np.zeros((2, 3, 5), np.float32)
    values[:, :, 0] = 0.9  # the sink
    values[:, :, 1:4] = [0.05, 0.04, 0.0001]
    values[:, :, 4] = 1 - values[:, :, :4].sum(axis=2)
    shown = view(values, np.arange(5, dtype=np.int64), state, layer=None, head=None, scale="linear")
    assert shown["buckets"][1] == 63 and shown["buckets"][0] == 63  # the sink is clipped, not the scale's top
    assert shown["top"][0]["position"] == 0
    assert np.allclose(shown["overview"], 0.0901, atol=1e-3)  # content only, summed over columns 1-3
    log = view(values, np.arange(5, dtype=np.int64), state, layer=0, head=0, scale="log")
    assert 0 < log["buckets"][3] < log["buckets"][2] < log["buckets"][1] == 63
    with pytest.raises(Exception, match="layer 2"):
        view(values, np.arange(5, dtype=np.int64), state, layer=2, head=None, scale="log")


def test_reply_records_survive_a_session_and_nonsense_is_left_out() -> None:
    state = ConversationState()
    state.add_message("user", [(5, b"a")] * 10)
    records = ReplyRecords()
    records.add(ReplyRecord(np.array([0, 1, 2, 5, 6], np.int64), (7, 8, 9)))
    meta = records.to_meta()
    assert meta == [{"request": [[0, 3], [5, 7]], "generated": [7, 8, 9]}]
    again = ReplyRecords.from_meta(meta, state)
    found = again.find(9)
    assert found is not None and found[1] == 2 and found[0].columns(2).tolist() == [0, 1, 2, 5, 6, 7, 8]
    bad = ReplyRecords.from_meta([{"request": [[0, 3]], "generated": [99]}, {"oops": 1}, "x"], state)
    assert bad.find(99) is None
