"""`Chat.reply(stop=...)`: Stop keeps the reply generated so far (the contract's abort, A1)."""

from __future__ import annotations

import asyncio

from halo_client.client import KoboldClient
from halo_client.conversation import Chat
from halo_client.conversation.chat import ReplyStep
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer


async def test_stop_ends_the_reply_with_what_was_generated() -> None:
    async with MockKoboldServer(backend=MockBackend(strict_template=True),
                                faults=FaultPlan(token_delay_s=0.03)) as server, \
            KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Sys.", max_length=60, sampler={"temperature": 0})
        await chat.add_message("user", "Talk.")
        stop = asyncio.Event()
        seen: list[ReplyStep] = []

        def on_token(step: ReplyStep) -> None:
            seen.append(step)
            if len(seen) == 3:
                stop.set()

        reply = await chat.reply(on_token, stop=stop)
        assert reply.done.finish_reason == "aborted"
        assert 3 <= len(reply.tokens) <= 6  # the server finishes the token in hand
        assert chat.state.turns[-1].complete and chat.state.turns[-1].role == "assistant"
        await chat.add_message("user", "Go on.")
        server.faults = FaultPlan()
        again = await asyncio.wait_for(chat.reply(), 10)  # the template is intact: strict ChatML accepts it
        assert again.done.finish_reason in ("eos", "length")
