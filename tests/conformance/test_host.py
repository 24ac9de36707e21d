"""Rule H0: a Host a DNS-rebinding page would send is refused on every Halo Weave endpoint."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest

from halo_client.messages import ErrorResponse
from tests import raw_ws
from tests.conformance.conftest import Target
from tests.conformance.helpers import auth_headers, still_serving

REST = (("GET", "/api/v1/model/info", None), ("POST", "/api/v1/tokenize", {"text": "x"}),
        ("POST", "/api/v1/detokenize", {"token_ids": [1]}))


def _port(target: Target) -> int:
    port = urlsplit(target.url).port
    assert port is not None
    return port


def _upgrade(target: Target, host: str, origin: str | None) -> str:
    """The upgrade's answer: the 101's status line, or the whole refusal."""
    headers = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(target).items())
    if origin:
        headers += f"Origin: {origin}\r\n"
    try:
        sock = raw_ws.open_stream(_port(target), headers=headers, host_header=host)
    except ConnectionError as refused:
        return str(refused)
    sock.close()
    return "HTTP/1.1 101"


async def _rest_statuses(target: Target, host: str) -> list[tuple[int, str]]:
    """(status, body) of each REST endpoint asked with this Host."""
    async with httpx.AsyncClient(base_url=target.url, headers=auth_headers(target)) as http:
        return [((r := await http.request(method, path, json=body, headers={"Host": host})).status_code, r.text)
                for method, path, body in REST]


@pytest.mark.parametrize("host", ["evil.example", "attacker.test.", "localhost.evil.example"])
async def test_rebinding_host_is_refused(target: Target, host: str) -> None:
    port = _port(target)
    for status, body in await _rest_statuses(target, f"{host}:{port}"):
        assert status == 403, body
        assert ErrorResponse.model_validate_json(body).error.code == "HOST_NOT_ALLOWED"
    # the attack itself: the page's own origin, so rule H2 alone would let it in
    answer = _upgrade(target, f"{host}:{port}", f"http://{host}:{port}")
    assert answer.startswith("HTTP/1.1 403"), answer
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["error"]["code"] == "HOST_NOT_ALLOWED"
    await still_serving(target)


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "[::1]", "app.localhost"])
async def test_loopback_hosts_are_served(target: Target, host: str) -> None:
    port = _port(target)
    for status, body in await _rest_statuses(target, f"{host}:{port}"):
        assert status == 200, body
    assert _upgrade(target, f"{host}:{port}", f"http://{host}:{port}").startswith("HTTP/1.1 101")
    assert _upgrade(target, f"{host}:{port}", None).startswith("HTTP/1.1 101")
