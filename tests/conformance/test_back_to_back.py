"""BUSY means another generation is running (api_spec, websocket.md): a client that starts its next
stream the moment the previous one ended (its `done` arrived, or its connection closed) is never
told BUSY. A server that sends `done` before it frees its generation slot fails here."""

from __future__ import annotations

import pytest

from tests.conformance.conftest import Target
from tests.conformance.helpers import auth_headers, prompt_ids, still_serving, ws_url
from tests.streaming import streams_back_to_back

STREAMS = 40


@pytest.mark.parametrize("start_next", ["done", "close"], ids=["at done", "after the close"])
async def test_streams_started_back_to_back_are_never_busy(target: Target, start_next: str) -> None:
    ids = await prompt_ids(target, "Hello")
    await still_serving(target)  # whatever an earlier test left running has ended
    # 8 tokens: against the patched KoboldCPP that freed its slot after `done`, 2-token streams
    # rarely met BUSY, 8-token ones did (7 of 40 in one run)
    request = {"input_ids": ids, "max_length": 8, "temperature": 0}
    endings = await streams_back_to_back(ws_url(target), auth_headers(target), request, STREAMS,
                                         start_next=start_next)
    busy = endings.count("BUSY")
    print(f"[{target.name}] {STREAMS} streams started at {start_next}: {busy} BUSY")
    assert set(endings) <= {"done", "BUSY"}, endings
    assert busy == 0, f"{busy} of {STREAMS} streams started at {start_next} of the previous one got BUSY"
