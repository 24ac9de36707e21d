"""Parsing request bodies into the contract's messages, with the contract's error codes."""

from __future__ import annotations

import json
from typing import Final, TypeVar

import pydantic

from halo_client.messages import ErrorCode


class RequestRejected(Exception):
    """A request the contract refuses, with the error code to answer it with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message



_M = TypeVar("_M", bound=pydantic.BaseModel)
_ID_FIELDS: Final = frozenset({"input_ids", "stop_token_ids", "banned_token_ids", "token_ids"})


def parse_body(model: type[_M], body: bytes | str) -> _M:
    """Parse a request body, answering the contract's error code for each way it can be bad."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise RequestRejected("INVALID_REQUEST", f"the request is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(obj)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        # A negative id, or one past 2**31, is a token outside the vocabulary, like one past its end.
        if all(len(e["loc"]) == 2 and e["loc"][0] in _ID_FIELDS and e["type"] in ("greater_than_equal", "less_than")
               for e in errors):
            raise RequestRejected("INVALID_TOKEN", validation_message(exc)) from exc
        raise RequestRejected("INVALID_REQUEST", validation_message(exc)) from exc



def validation_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
