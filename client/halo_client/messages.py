"""Pydantic models of every JSON message in the contract (`api_spec/`).

These mirror `api_spec/openapi.yaml` and `api_spec/schemas/*.json` field by field; the test
suite checks both against every worked example in `api_spec/examples/`, so a drift between
the documents and the code fails a test rather than a user.
"""

from __future__ import annotations

import base64
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)

ErrorCode = Literal[
    "INVALID_REQUEST",
    "INVALID_TOKEN",
    "CONTEXT_OVERFLOW",
    "BUSY",
    "UNAUTHORIZED",
    "ORIGIN_NOT_ALLOWED",
    "HOST_NOT_ALLOWED",
    "NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "ATTENTION_UNAVAILABLE",
    "INTERNAL",
]
#: the HTTP status of each error code on a REST answer or a refused upgrade (None: only ever a
#: WebSocket `error` message)
ERROR_STATUS: Final[dict[ErrorCode, int | None]] = {
    "INVALID_REQUEST": 400,
    "INVALID_TOKEN": 400,
    "CONTEXT_OVERFLOW": 400,
    "UNAUTHORIZED": 401,
    "ORIGIN_NOT_ALLOWED": 403,
    "HOST_NOT_ALLOWED": 403,
    "NOT_FOUND": 404,
    "PAYLOAD_TOO_LARGE": 413,
    "INTERNAL": 500,
    "BUSY": 503,
    "ATTENTION_UNAVAILABLE": None,
}
FinishReason = Literal["length", "eos", "stop_token", "aborted"]
AttentionDType = Literal["float32", "float16"]
#: what a frame holds (websocket.md section 4): `full` `[layers, heads, ctx]`, `layer_stats`
#: `[layers, 2, ctx]` (mean and max over each layer's heads), `model_stats` `[1, 2, ctx]`
AttentionLayout = Literal["full", "layer_stats", "model_stats"]

def _piece_from_wire(value: object) -> object:
    # JSON carries base64 text; Python callers hand over the bytes themselves.
    if isinstance(value, str):
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"piece must be standard padded base64: {exc}") from exc
    return value


#: A token's exact bytes. On the wire: standard, padded base64 (RFC 4648 section 4).
Piece = Annotated[
    bytes,
    BeforeValidator(_piece_from_wire),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
]

TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class _Message(BaseModel):
    # Unknown fields are a contract violation in both directions: a typo in a request
    # field must not be silently ignored. Strict: "10" is not a number, as in the schemas.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ----------------------------------------------------------------------------- REST


def _full_only() -> list[AttentionLayout]:
    return ["full"]


class AttentionSupport(_Message):
    available: bool
    reason: str | None
    dtypes: list[AttentionDType]
    #: a server that does not list its layouts offers `full` only
    layouts: list[AttentionLayout] = Field(default_factory=_full_only)


class ModelInfo(_Message):
    model_name: str
    architecture: str
    vocab_size: Annotated[int, Field(ge=1)]
    num_layers: Annotated[int, Field(ge=1)]
    num_attention_heads: Annotated[int, Field(ge=1)]
    num_key_value_heads: Annotated[int, Field(ge=1)]
    hidden_size: Annotated[int, Field(ge=1)]
    max_context_length: Annotated[int, Field(ge=2)]
    max_trained_context: Annotated[int, Field(ge=1)]
    bos_token_id: TokenId | None
    eos_token_id: TokenId | None
    eot_token_id: TokenId | None
    rope_freq_base: float
    rope_freq_scale: float
    chat_template: str | None
    attention_api_version: Literal[1]
    attention: AttentionSupport

    @property
    def end_token_ids(self) -> frozenset[int]:
        """The tokens that end a generation (`eos`): the model's EOS and EOT, where it has them."""
        return frozenset(t for t in (self.eos_token_id, self.eot_token_id) if t is not None)


class TokenizeRequest(_Message):
    text: str
    add_special_tokens: bool = True


class TokenPiece(_Message):
    token_id: TokenId
    piece: Piece


class TokenizeResponse(_Message):
    tokens: list[TokenPiece]
    token_ids: list[TokenId]
    token_count: Annotated[int, Field(ge=0)]


class DetokenizeRequest(_Message):
    token_ids: list[TokenId]


class DetokenizeResponse(_Message):
    text: str


class ErrorDetail(_Message):
    code: ErrorCode
    message: str


class ErrorResponse(_Message):
    """The one error body of every REST failure."""

    error: ErrorDetail


# ------------------------------------------------------------------------ WebSocket


class GenerateRequest(_Message):
    """The one text message a client sends after the upgrade."""

    input_ids: Annotated[list[TokenId], Field(min_length=1)]
    max_length: Annotated[int, Field(ge=1)] = 100
    temperature: Annotated[float, Field(ge=0.0)] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.92
    top_k: Annotated[int, Field(ge=0)] = 100
    rep_pen: Annotated[float, Field(gt=0.0)] = 1.1
    rep_pen_range: Annotated[int, Field(ge=0)] = 320
    sampler_seed: Annotated[int, Field(ge=-1, lt=2**32)] = -1
    stop_token_ids: list[TokenId] = Field(default_factory=list)
    banned_token_ids: list[TokenId] = Field(default_factory=list)
    return_attention: bool = False
    attention_dtype: AttentionDType = "float32"
    attention_layout: AttentionLayout = "full"


class AbortMessage(_Message):
    """Optional: asks the server to stop early; it still answers with `done` (aborted)."""

    type: Literal["abort"]


class TokenMessage(_Message):
    type: Literal["token"]
    index: Annotated[int, Field(ge=0)]
    token_id: TokenId
    piece: Piece


class Timings(_Message):
    prompt_ms: Annotated[float, Field(ge=0.0)]
    generation_ms: Annotated[float, Field(ge=0.0)]
    tokens_per_second: Annotated[float, Field(ge=0.0)]


class DoneMessage(_Message):
    type: Literal["done"]
    finish_reason: FinishReason
    token_count: Annotated[int, Field(ge=0)]
    prompt_tokens: Annotated[int, Field(ge=0)]
    timings: Timings


class ErrorMessage(_Message):
    type: Literal["error"]
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    TokenMessage | DoneMessage | ErrorMessage, Field(discriminator="type")
]
