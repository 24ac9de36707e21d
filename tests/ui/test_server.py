"""The UI server on a real socket (uvicorn in this test's event loop): the page, its assets, the
WebSocket, and the Host and Origin rules that keep other pages from driving it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from halo_client.serving.access import AccessPolicy
from halo_client.serving.listen import claim_port
from halo_client.ui.protocol import decode_levels
from halo_client.ui.server import Outbox, create_app, uvicorn_server
from tests.raw_ws import open_stream
from tests.ui.conftest import Bench


@pytest.fixture
async def ui_url(bench: Bench) -> AsyncIterator[str]:
    sock = claim_port("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn_server(create_app(bench.workbench, AccessPolicy(bind_host="127.0.0.1")))
    server.config.lifespan = "off"  # the bench fixture runs the workbench's life itself
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(ui_url: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{ui_url}") as http:
        page = await http.get("/")
        assert page.status_code == 200 and 'aria-label="Message"' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
        for asset in ("/static/app.js", "/static/transcript.js", "/static/tooltip.js", "/static/app.css",
                      "/static/transcript.css", "/palette.css"):
            assert (await http.get(asset)).status_code == 200, asset
        assert ".h63{" in (await http.get("/palette.css")).text


async def test_a_rebinding_host_is_refused_everywhere(ui_url: str) -> None:
    port = ui_url.split(":")[1]
    async with httpx.AsyncClient(base_url=f"http://{ui_url}") as http:
        refused = await http.get("/", headers={"Host": f"evil.example:{port}"})
        assert refused.status_code == 403 and "rebinding" in refused.text
        assert (await http.get("/", headers={"Host": f"localhost:{port}"})).status_code == 200
        # a state-changing request from a foreign page is refused too (the page itself uses none)
        posted = await http.post("/", headers={"Origin": "http://evil.example"})
        assert posted.status_code == 403
    # (a raw upgrade: a client library adds a Host of its own)
    with pytest.raises(ConnectionError, match=r"HTTP/1\.1 403"):
        await asyncio.to_thread(open_stream, int(port), "/ws", host_header=f"evil.example:{port}")
    (await asyncio.to_thread(open_stream, int(port), "/ws", host_header=f"localhost:{port}")).close()


async def test_a_foreign_page_cannot_open_the_websocket(ui_url: str) -> None:
    for origin in ("http://evil.example", f"http://{ui_url.replace('127.0.0.1', '127.0.0.2')}", "null"):
        with pytest.raises(InvalidStatus) as refusal:
            async with connect(f"ws://{ui_url}/ws", origin=origin):  # type: ignore[arg-type]
                pass
        assert refusal.value.response.status_code == 403, origin


async def test_the_pages_own_origin_gets_the_conversation_and_can_chat(ui_url: str, bench: Bench) -> None:
    async with connect(f"ws://{ui_url}/ws", origin=f"http://{ui_url}", max_size=None) as ws:  # type: ignore[arg-type]
        snapshot = json.loads(await ws.recv())
        assert snapshot["type"] == "snapshot" and snapshot["model"]["name"] == "halo-mock"
        epoch, _newest, _sent, brightness, _buckets = decode_levels(await ws.recv())  # type: ignore[arg-type]
        assert epoch == snapshot["epoch"] and brightness.size == sum(1 - d for d in snapshot["rows"]["deleted"])
        await ws.send(json.dumps({"type": "send", "text": "Hello over the socket."}))
        kinds = []
        while "reply_done" not in kinds:
            message = await asyncio.wait_for(ws.recv(), 10)
            kinds.append("levels" if isinstance(message, bytes) else json.loads(message)["type"])
        assert kinds.count("token") >= 3 and kinds.count("levels") >= 2  # (the outbox may skip stale ones)
        await ws.send("not json")
        while (answer := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "error":
            pass
        assert answer["kind"] == "invalid"


def test_the_outbox_keeps_every_message_but_only_the_newest_levels() -> None:
    outbox = Outbox()
    for message in ("token 1", b"levels 1", "token 2", b"levels 2", "rows", b"levels 3"):
        outbox.put(message)
    assert list(outbox._queue) == ["token 1", "token 2", "rows", b"levels 3"]
    assert outbox.dropped == 2
