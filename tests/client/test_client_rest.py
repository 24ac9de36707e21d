"""KoboldClient's REST side against scripted responses (respx): every failure is typed."""

from __future__ import annotations

import httpx
import pytest
import respx

from halo_client.client import KoboldClient
from halo_client.errors import (
    HaloError,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)

URL = "http://kobold.test:5001"


def error(code: str, message: str = "nope") -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


@respx.mock
async def test_tokenize_decodes_base64_pieces() -> None:
    respx.post(f"{URL}/api/v1/tokenize").respond(json={
        "tokens": [{"token_id": 5, "piece": "8J+Y"}, {"token_id": 6, "piece": "gA=="}],
        "token_ids": [5, 6], "token_count": 2,
    })
    async with KoboldClient(URL) as client:
        result = await client.tokenize("😀")
    assert [t.piece for t in result.tokens] == [b"\xf0\x9f\x98", b"\x80"]
    assert b"".join(t.piece for t in result.tokens).decode() == "😀"


@respx.mock
async def test_password_is_sent_as_bearer() -> None:
    route = respx.post(f"{URL}/api/v1/detokenize").respond(json={"text": "hi"})
    async with KoboldClient(URL, password="pw") as client:
        assert await client.detokenize([1]) == "hi"
    assert route.calls.last.request.headers["authorization"] == "Bearer pw"


@pytest.mark.parametrize(
    ("status", "body", "exc", "code"),
    [
        (401, error("UNAUTHORIZED"), Unauthorized, "UNAUTHORIZED"),
        (503, error("BUSY"), ServerBusy, "BUSY"),
        (400, error("INVALID_TOKEN"), ServerError, "INVALID_TOKEN"),
        (500, error("INTERNAL"), ServerError, "INTERNAL"),
        (404, {"detail": "Not Found"}, ServerError, "NOT_FOUND"),
    ],
)
@respx.mock
async def test_error_bodies_become_typed_errors(status: int, body: dict[str, object],
                                                exc: type[ServerError], code: str) -> None:
    respx.get(f"{URL}/api/v1/model/info").respond(status, json=body)
    async with KoboldClient(URL) as client:
        with pytest.raises(exc) as raised:
            await client.model_info()
    assert raised.value.code == code and raised.value.status == status
    assert URL in str(raised.value)


@respx.mock
async def test_non_json_and_contract_breaking_bodies_are_protocol_errors() -> None:
    respx.get(f"{URL}/api/v1/model/info").respond(200, text="<html>KoboldAI Lite</html>")
    async with KoboldClient(URL) as client:
        with pytest.raises(ProtocolError, match="not JSON"):
            await client.model_info()
    respx.get(f"{URL}/api/v1/model/info").respond(200, json={"model_name": "x"})
    async with KoboldClient(URL) as client:
        with pytest.raises(ProtocolError, match="breaks the contract"):
            await client.model_info()
    respx.get(f"{URL}/api/v1/model/info").respond(502, json={"oops": 1})
    async with KoboldClient(URL) as client:
        with pytest.raises(ProtocolError, match="502"):
            await client.model_info()


@respx.mock
async def test_transport_failures() -> None:
    respx.get(f"{URL}/api/v1/model/info").mock(side_effect=httpx.ConnectError("refused"))
    async with KoboldClient(URL) as client:
        with pytest.raises(ServerUnreachable, match=r"kobold\.test:5001"):
            await client.model_info()
    respx.get(f"{URL}/api/v1/model/info").mock(side_effect=httpx.ReadTimeout("slow"))
    async with KoboldClient(URL, timeout=3) as client:
        with pytest.raises(RequestTimeout, match="3 s"):
            await client.model_info()


async def test_bad_urls_and_requests_are_refused_before_any_io() -> None:
    with pytest.raises(HaloError, match="http://"):
        KoboldClient("localhost:5001")
    async with KoboldClient(URL) as client:
        with pytest.raises(HaloError, match="invalid generation request"):
            client.generate_stream([], max_length=5)
        with pytest.raises(HaloError, match="invalid generation request"):
            client.generate_stream([1], temprature=0.5)
