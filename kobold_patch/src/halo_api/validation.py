"""The contract's request rules (api_spec/schemas/*.json and the rules the schema cannot see),
on plain dicts: the same checks and messages as halo_client.serving's pydantic models."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

TOKEN_ID_LIMIT = 2 ** 31
DTYPES = ("float32", "float16")
#: attention_layout values, in the order of their code (frame header offset 14; generation_inputs)
LAYOUTS = ("full", "layer_stats", "model_stats")

GENERATE_DEFAULTS: dict[str, Any] = {
    "max_length": 100, "temperature": 0.7, "top_p": 0.92, "top_k": 100, "rep_pen": 1.1,
    "rep_pen_range": 320, "sampler_seed": -1, "stop_token_ids": [], "banned_token_ids": [],
    "return_attention": False, "attention_dtype": "float32", "attention_layout": "full",
}

#: a generation request, validated, with every default filled in
Request = dict[str, Any]


class Rejected(Exception):
    """A request the contract refuses, with the error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.code = code
        self.message = message


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and v == v and v not in (float("inf"), float("-inf")))


def _parse_json_object(body: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("INVALID_REQUEST", f"the request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected("INVALID_REQUEST", "the request must be a JSON object")
    return obj


def _check_fields(obj: dict[str, Any], allowed: Iterable[str], required: Iterable[str]) -> None:
    allowed = sorted(allowed)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise Rejected("INVALID_REQUEST", f"unknown field {unknown[0]} (allowed: {', '.join(allowed)})")
    for name in required:
        if name not in obj:
            raise Rejected("INVALID_REQUEST", f"missing field {name}")


def _token_list(obj: dict[str, Any], name: str, errors: list[str], outside: list[str]) -> list[int]:
    """The ids of obj[name]; a malformed list goes to `errors` (INVALID_REQUEST), an integer that
    can be no token id of any vocabulary (negative, or past 2**31) to `outside` (INVALID_TOKEN,
    like an id past this model's vocabulary: rule Q2)."""
    value = obj[name]
    if not isinstance(value, list):
        errors.append(f"{name} must be an array of token ids")
        return []
    for t in value:
        if not _is_int(t):
            errors.append(f"{name} holds {t!r}, not an integer token id")
            return []
        if t < 0 or t >= TOKEN_ID_LIMIT:
            outside.append(f"{name} holds token id {t}, outside the vocabulary")
            return []
    return value


def parse_generate_request(text: str) -> Request:
    """The GenerateRequest of api_spec (schemas/generate_request.json) as a dict with defaults."""
    obj = _parse_json_object(text)
    _check_fields(obj, [*GENERATE_DEFAULTS, "input_ids"], ["input_ids"])
    req = dict(GENERATE_DEFAULTS)
    req.update(obj)
    errors: list[str] = []
    outside: list[str] = []
    for name in ("input_ids", "stop_token_ids", "banned_token_ids"):
        _token_list(req, name, errors, outside)
    if isinstance(req["input_ids"], list) and not req["input_ids"]:
        errors.append("input_ids must hold at least one token id")

    def need(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    v = req["max_length"]
    need(_is_int(v) and v >= 1, "max_length must be an integer >= 1")
    v = req["temperature"]
    need(_is_number(v) and v >= 0, "temperature must be a number >= 0")
    v = req["top_p"]
    need(_is_number(v) and 0 < v <= 1, "top_p must be a number in (0, 1]")
    v = req["top_k"]
    need(_is_int(v) and v >= 0, "top_k must be an integer >= 0")
    v = req["rep_pen"]
    need(_is_number(v) and v > 0, "rep_pen must be a number > 0")
    v = req["rep_pen_range"]
    need(_is_int(v) and v >= 0, "rep_pen_range must be an integer >= 0")
    v = req["sampler_seed"]
    need(_is_int(v) and -1 <= v < 2 ** 32, "sampler_seed must be an integer in [-1, 2^32)")
    need(isinstance(req["return_attention"], bool), "return_attention must be true or false")
    need(req["attention_dtype"] in DTYPES, "attention_dtype must be one of " + ", ".join(DTYPES))
    need(req["attention_layout"] in LAYOUTS, "attention_layout must be one of " + ", ".join(LAYOUTS))
    if errors:
        raise Rejected("INVALID_REQUEST", "; ".join(errors[:5]))
    if outside:
        raise Rejected("INVALID_TOKEN", outside[0])
    return req


def check_generate_request(req: Request, info: dict[str, Any]) -> None:
    """What the schema cannot see: the vocabulary, the context, attention availability."""
    vocab = info["vocab_size"]
    for name in ("input_ids", "stop_token_ids", "banned_token_ids"):
        bad = [t for t in req[name] if t >= vocab]
        if bad:
            raise Rejected("INVALID_TOKEN", f"{name} holds token id {bad[0]}, outside this model's vocabulary "
                           f"[0, {vocab}); tokenize with this server's /api/v1/tokenize")
    total = len(req["input_ids"]) + req["max_length"]
    if total > info["max_context_length"]:
        raise Rejected("CONTEXT_OVERFLOW", f"{len(req['input_ids'])} input tokens + max_length {req['max_length']} = "
                       f"{total} exceeds the server's context of {info['max_context_length']} tokens; prune the "
                       "conversation or lower max_length (or restart KoboldCPP with a larger --contextsize)")
    if req["return_attention"]:
        att = info["attention"]
        if not att["available"]:
            raise Rejected("ATTENTION_UNAVAILABLE", f"attention export is off on this server: {att['reason']}")
        if req["attention_dtype"] not in att["dtypes"]:
            raise Rejected("ATTENTION_UNAVAILABLE", f"attention_dtype {req['attention_dtype']} is not offered; "
                           f"this server sends {', '.join(att['dtypes'])}")
        if req["attention_layout"] not in att.get("layouts", ["full"]):
            raise Rejected("ATTENTION_UNAVAILABLE", f"attention_layout {req['attention_layout']} is not offered; "
                           f"this server sends {', '.join(att.get('layouts', ['full']))}")


def parse_tokenize_request(body: bytes) -> tuple[str, bool]:
    obj = _parse_json_object(body)
    _check_fields(obj, ["text", "add_special_tokens"], ["text"])
    if not isinstance(obj["text"], str):
        raise Rejected("INVALID_REQUEST", "text must be a string")
    add = obj.get("add_special_tokens", True)
    if not isinstance(add, bool):
        raise Rejected("INVALID_REQUEST", "add_special_tokens must be true or false")
    return obj["text"], add


def parse_detokenize_request(body: bytes, vocab: int) -> list[int]:
    obj = _parse_json_object(body)
    _check_fields(obj, ["token_ids"], ["token_ids"])
    errors: list[str] = []
    outside: list[str] = []
    ids = _token_list(obj, "token_ids", errors, outside)
    if errors:
        raise Rejected("INVALID_REQUEST", errors[0])
    if outside:
        raise Rejected("INVALID_TOKEN", outside[0])
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise Rejected("INVALID_TOKEN", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    return ids
