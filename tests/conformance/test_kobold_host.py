"""The host server is unchanged: a server that serves the contract next to KoboldCPP's own API
(the patched KoboldCPP) answers KoboldCPP's requests after Halo Weave traffic exactly as before.

Opt-in: `--kobold-host-api` (with `--server-url` of such a server, e.g. `make serve`). Compared
byte for byte over raw sockets (an HTTP library would hide an answer that never ends, or a
connection kept alive): the status line, the headers but Date, the body, each answer complete
(the server closes the connection, as KoboldCPP's HTTP/1.0 does) within 1 s.
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest
import websockets

from tests import raw_http, raw_ws
from tests.conformance.conftest import Target
from tests.conformance.helpers import TEXT, auth_headers, client, collect, prompt_ids, still_serving, ws_url

#: KoboldCPP v1.76 serves with 24 threads (RunServerMultiThreaded): this many connections open at
#: once reach every one of them (a thread holds one connection at a time)
KOBOLD_THREADS = 24
DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def kobold(target: Target, request: pytest.FixtureRequest) -> Target:
    if not request.config.getoption("--kobold-host-api"):
        pytest.skip("KoboldCPP's own API is checked only with --kobold-host-api (and --server-url of a server "
                    "that serves it next to the contract: the patched KoboldCPP, kobold_patch/README.md); the same "
                    "cases run against the halo_api package with a fake backend in tests/kobold_patch/test_halo_api.py")
    if target.server is not None:
        pytest.fail("--kobold-host-api needs --server-url: the built-in servers do not serve KoboldCPP's API")
    return target


def _port(target: Target) -> int:
    port = urlsplit(target.url).port
    assert port is not None
    return port


def _requests(target: Target) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """KoboldCPP's requests: (cheap ones, sent on many connections at once; generation ones,
    which KoboldCPP serializes on its model lock, sent one after another)."""
    auth = auth_headers(target)
    # greedy and short, so that the text compares and the answer comes within the deadline
    params = {"prompt": "The lighthouse keeper counted", "max_length": 4, "temperature": 0, "top_k": 1,
              "rep_pen": 1.0, "sampler_seed": 42, "ban_eos_token": True}
    body = json.dumps(params).encode()
    cheap = {
        "OPTIONS preflight": raw_http.request("OPTIONS", "/api/v1/generate", headers={
            "Origin": "https://lite.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"}),
        "404": raw_http.request("GET", "/api/v1/no-such-endpoint"),
        "/api/v1/model": raw_http.request("GET", "/api/v1/model", headers=auth),
    }
    generation = {
        "/api/v1/generate": raw_http.request("POST", "/api/v1/generate", headers=auth, body=body),
        "/api/v1/generate malformed": raw_http.request("POST", "/api/v1/generate", headers=auth, body=b"{not json"),
        "/api/extra/generate/stream": raw_http.request("POST", "/api/extra/generate/stream", headers=auth, body=body),
    }
    if target.password:
        generation["/api/v1/generate unauthorized"] = raw_http.request("POST", "/api/v1/generate", body=body)
    return cheap, generation


def _comparable(name: str, answer: raw_http.Answer) -> tuple[str, tuple[tuple[str, str], ...], bytes]:
    """The SSE stream's events are cut by KoboldCPP's 20 ms polling, wherever the tokens happen to
    be: its body compares as the text and finish reason the events carry."""
    body = answer.body
    if name == "/api/extra/generate/stream":
        events = [json.loads(line[len(b"data: "):]) for line in body.split(b"\n") if line.startswith(b"data: ")]
        finish = events[-1]["finish_reason"] if events else None
        body = json.dumps(["".join(e["token"] for e in events), finish]).encode()
    return answer.status_line, answer.headers, body


def _kobold_answers(target: Target) -> dict[str, list[tuple[str, tuple[tuple[str, str], ...], bytes]]]:
    port = _port(target)
    cheap, generation = _requests(target)
    out = {}
    for name, raw in cheap.items():
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(KOBOLD_THREADS)]
        try:
            for s in socks:
                s.sendall(raw)
            out[name] = [_comparable(name, raw_http.parse(raw_http.read_to_close(s, DEADLINE_S, raw), 0.0))
                         for s in socks]
        finally:
            for s in socks:
                s.close()
    for name, raw in generation.items():
        out[name] = [_comparable(name, raw_http.exchange(port, raw, deadline_s=DEADLINE_S)) for _ in range(3)]
    return out


async def _halo_traffic(target: Target) -> None:
    """REST (good, bad, refused) on many connections at once, left open like keep-alive clients
    leave them; streams that end, are aborted, are left mid-way; refused upgrades."""
    port = _port(target)
    auth = {**auth_headers(target), "Connection": "keep-alive"}
    rest = [raw_http.request("GET", "/api/v1/model/info", headers=auth),
            raw_http.request("POST", "/api/v1/tokenize", headers=auth, body=json.dumps({"text": TEXT}).encode()),
            raw_http.request("POST", "/api/v1/detokenize", headers=auth, body=b'{"token_ids": [1, 2, 3]}'),
            raw_http.request("POST", "/api/v1/tokenize", headers=auth, body=b"{not json"),
            raw_http.request("POST", "/api/v1/detokenize", headers=auth, body=b'{"token_ids": [-1]}'),
            raw_http.request("GET", "/api/v1/model/info", headers={"Connection": "keep-alive"}),
            raw_http.request("GET", "/api/v1/model/info", host="rebound.example", headers=auth),
            raw_http.request("GET", "/api/v1/generate/stream", headers=auth)]
    for raw in rest:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(KOBOLD_THREADS)]
        try:
            for s in socks:
                s.sendall(raw)
            for s in socks:
                raw_http.read_answer(s)
        finally:
            for s in socks:
                s.close()
    ids = await prompt_ids(target)
    await collect(target, ids, max_length=3, temperature=0, return_attention=True)
    async with websockets.connect(ws_url(target), additional_headers=auth_headers(target), max_size=None) as ws:
        await ws.send(json.dumps({"input_ids": ids, "max_length": 200, "temperature": 0}))
        await ws.recv()
        await ws.send(json.dumps({"type": "abort"}))
        _ = [m async for m in ws]
    async with client(target) as c, c.generate_stream(ids, max_length=200, temperature=0,
                                                      return_attention=True) as stream:
        await stream.__anext__()  # and leave
    headers = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(target).items())
    for refused in ({"headers": headers + "Origin: https://not-allowed.example\r\n"},
                    {"headers": headers, "host_header": f"rebound.example:{port}"}):
        with pytest.raises(ConnectionError):
            raw_ws.open_stream(port, **refused)
    await still_serving(target)


async def test_kobold_answers_unchanged_after_halo_weave_traffic(kobold: Target) -> None:
    before = await asyncio.to_thread(_kobold_answers, kobold)
    for name, answers in before.items():  # the comparison is only as good as the answers are stable
        assert all(a == answers[0] for a in answers), f"{name} answers differ among themselves before any traffic"
    await _halo_traffic(kobold)
    after = await asyncio.to_thread(_kobold_answers, kobold)
    for name, answers in after.items():
        for answer in answers:
            assert answer == before[name][0], f"{name}: {before[name][0]!r} became {answer!r}"


async def test_idle_halo_weave_connections_never_block_kobold(kobold: Target) -> None:
    """50 connections a Halo Weave client keeps open after its answer (more than KoboldCPP's 24
    threads): a KoboldCPP request is still answered within the deadline."""
    port = _port(kobold)
    raw = raw_http.request("GET", "/api/v1/model/info", headers={**auth_headers(kobold), "Connection": "keep-alive"})
    socks: list[socket.socket] = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(raw)
            assert raw_http.read_answer(s).status_line.split()[1] == "200"
            socks.append(s)
        cheap, _ = _requests(kobold)
        answer = await asyncio.to_thread(raw_http.exchange, port, cheap["/api/v1/model"], deadline_s=DEADLINE_S)
        assert answer.status_line.split()[1] == "200"
    finally:
        for s in socks:
            s.close()
