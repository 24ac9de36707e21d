"""REST endpoints: model info, tokenize/detokenize with exact bytes, the one error body."""

from __future__ import annotations

import httpx
import pytest

from halo_client.messages import ErrorResponse, ModelInfo
from tests.conformance.conftest import Target
from tests.conformance.helpers import auth_headers, client

TEXTS = [
    "plain ASCII, with punctuation: 3.14!",
    "emoji 😀👍🏽🧑‍🚀 and a flag 🇺🇦",
    "CJK 世界你好, こんにちは, 안녕하세요",
    "mixed\ttabs\nnew lines\r\n and  double  spaces",
    "a lone combining accent: e\u0301",
]


async def test_model_info_follows_the_contract(target: Target) -> None:
    async with httpx.AsyncClient(base_url=target.url, headers=auth_headers(target)) as http:
        response = await http.get("/api/v1/model/info")
    assert response.status_code == 200
    info = ModelInfo.model_validate(response.json())
    assert info.num_attention_heads % info.num_key_value_heads == 0
    assert info.max_context_length >= 2
    assert info.attention_api_version == 1
    assert info.attention.available, f"attention export is off: {info.attention.reason}"
    assert "float32" in info.attention.dtypes


@pytest.mark.parametrize("text", TEXTS)
async def test_pieces_are_the_exact_bytes_of_the_text(target: Target, text: str) -> None:
    async with client(target) as c:
        info = await c.model_info()
        result = await c.tokenize(text, add_special_tokens=False)
        assert result.token_count == len(result.token_ids) == len(result.tokens)
        assert [t.token_id for t in result.tokens] == result.token_ids
        assert all(0 <= t < info.vocab_size for t in result.token_ids)
        assert b"".join(t.piece for t in result.tokens) == text.encode("utf-8")
        assert await c.detokenize(result.token_ids) == text


async def test_add_special_tokens_adds_bos_only_when_the_model_wants_it(target: Target) -> None:
    async with client(target) as c:
        info = await c.model_info()
        plain = await c.tokenize("Hello", add_special_tokens=False)
        special = await c.tokenize("Hello", add_special_tokens=True)
    extra = special.token_ids[: len(special.token_ids) - len(plain.token_ids)]
    assert special.token_ids[len(extra):] == plain.token_ids
    assert extra in ([], [info.bos_token_id])


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/v1/tokenize", b"{not json", 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/tokenize", b'{"text": 42}', 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/tokenize", b"{}", 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/tokenize", b'{"text": "a", "extra": 1}', 400, "INVALID_REQUEST"),
        ("GET", "/api/v1/tokenize", b"", 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/detokenize", b'{"token_ids": [0, 1000000000]}', 400, "INVALID_TOKEN"),
        ("POST", "/api/v1/detokenize", b'{"token_ids": [-3]}', 400, "INVALID_TOKEN"),
        ("POST", "/api/v1/detokenize", b'{"token_ids": "1 2"}', 400, "INVALID_REQUEST"),
    ],
)
async def test_rest_errors(target: Target, method: str, path: str, body: bytes, status: int,
                           code: str) -> None:
    async with httpx.AsyncClient(base_url=target.url, headers=auth_headers(target)) as http:
        response = await http.request(method, path, content=body,
                                      headers={"content-type": "application/json"})
        assert response.status_code == status
        assert ErrorResponse.model_validate(response.json()).error.code == code
        assert (await http.get("/api/v1/model/info")).status_code == 200


async def test_oversized_rest_body_is_refused(target: Target) -> None:
    body = b'{"text": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    async with httpx.AsyncClient(base_url=target.url, headers=auth_headers(target)) as http:
        response = await http.post("/api/v1/tokenize", content=body)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_every_rest_answer_is_readable_cross_origin(target: Target) -> None:
    """`Access-Control-Allow-Origin: *` on every REST answer, errors too (openapi.yaml, "Cross-origin
    reads"), as on KoboldCPP's own endpoints."""
    async with httpx.AsyncClient(base_url=target.url) as http:
        auth = auth_headers(target)
        answers = [
            await http.get("/api/v1/model/info", headers=auth),
            await http.post("/api/v1/tokenize", json={"text": "Hi"}, headers=auth),
            await http.post("/api/v1/detokenize", json={"token_ids": [1]}, headers=auth),
            await http.post("/api/v1/tokenize", json={"text": 1}, headers=auth),
            await http.get("/api/v1/model/info", headers={"Host": "rebound.example"}),
        ]
        if target.password:
            answers.append(await http.get("/api/v1/model/info"))
    assert [a.status_code for a in answers][:5] == [200, 200, 200, 400, 403]
    for answer in answers:
        assert answer.headers.get("access-control-allow-origin") == "*", (answer.request.url, answer.status_code)
