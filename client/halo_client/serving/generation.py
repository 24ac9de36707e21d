"""The contract's generation rules, independent of any socket.

`check_request` turns a parsed request into either acceptance or the exact error code the
contract prescribes; `generate` is a pull-based iterator: each `next()` computes one token, so
a slow consumer slows the model instead of filling memory, and an abort takes effect before
the next token is computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from halo_client.frame import reduce_attention
from halo_client.messages import FinishReason, GenerateRequest, ModelInfo
from halo_client.serving.backend import ModelBackend, ReducesInGraph
from halo_client.serving.sampling import Sampler
from halo_client.serving.validation import RequestRejected


@dataclass(frozen=True)
class GeneratedToken:
    index: int
    token_id: int
    piece: bytes
    #: post-softmax float32 over `len(input_ids) + index` columns, in the request's layout
    #: (`[layers, heads, ctx]` when full); None without attention
    attention: npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    token_count: int
    prompt_tokens: int
    prompt_ms: float
    generation_ms: float


def check_request(request: GenerateRequest, info: ModelInfo) -> None:
    """Raise `RequestRejected` for what the schema alone cannot see."""
    for field, ids in (
        ("input_ids", request.input_ids),
        ("stop_token_ids", request.stop_token_ids),
        ("banned_token_ids", request.banned_token_ids),
    ):
        bad = [t for t in ids if t >= info.vocab_size]
        if bad:
            raise RequestRejected(
                "INVALID_TOKEN",
                f"{field} holds token id {bad[0]}, outside this model's vocabulary "
                f"[0, {info.vocab_size}); tokenize with this server's /api/v1/tokenize",
            )
    total = len(request.input_ids) + request.max_length
    if total > info.max_context_length:
        raise RequestRejected(
            "CONTEXT_OVERFLOW",
            f"{len(request.input_ids)} input tokens + max_length {request.max_length} = {total} "
            f"exceeds the server's context of {info.max_context_length} tokens; prune the "
            "conversation or lower max_length",
        )
    if request.return_attention:
        if not info.attention.available:
            raise RequestRejected(
                "ATTENTION_UNAVAILABLE",
                f"attention export is off on this server: {info.attention.reason or 'no reason given'}",
            )
        if request.attention_dtype not in info.attention.dtypes:
            raise RequestRejected(
                "ATTENTION_UNAVAILABLE",
                f"attention_dtype {request.attention_dtype} is not offered; this server sends "
                f"{', '.join(info.attention.dtypes)}",
            )
        if request.attention_layout not in info.attention.layouts:
            raise RequestRejected(
                "ATTENTION_UNAVAILABLE",
                f"attention_layout {request.attention_layout} is not offered; this server sends "
                f"{', '.join(info.attention.layouts)}",
            )


def generate(
    backend: ModelBackend,
    request: GenerateRequest,
    info: ModelInfo,
    should_stop: Callable[[], bool],
) -> Iterator[GeneratedToken | Finished]:
    """Tokens of one generation, then one `Finished`. Call `check_request` first."""
    want = request.return_attention
    sampler = Sampler(request)
    history = list(request.input_ids)
    eos = info.end_token_ids
    stops = set(request.stop_token_ids)
    if want and isinstance(backend, ReducesInGraph):
        backend.set_attention_layout(request.attention_layout)
    started = time.perf_counter()
    result = backend.prefill(request.input_ids, want)
    prompt_done = time.perf_counter()
    count = 0
    reason: FinishReason = "length"
    while True:
        if should_stop():
            reason = "aborted"
            break
        token = sampler.sample(result.logits, history)
        history.append(token)
        frame = result.attention
        if frame is not None and result.layout != request.attention_layout:
            frame = reduce_attention(frame, request.attention_layout)  # in the model's thread, next to it
        yield GeneratedToken(count, token, backend.token_bytes(token), frame)
        count += 1
        if token in eos:
            reason = "eos"
            break
        if token in stops:
            reason = "stop_token"
            break
        if count >= request.max_length:
            reason = "length"
            break
        if should_stop():
            reason = "aborted"
            break
        # The final token is never decoded (as in KoboldCPP): nothing would read its output.
        result = backend.decode(token, want)
    ended = time.perf_counter()
    gen_s = ended - prompt_done
    yield Finished(
        finish_reason=reason,
        token_count=count,
        prompt_tokens=len(request.input_ids),
        prompt_ms=(prompt_done - started) * 1000.0,
        generation_ms=gen_s * 1000.0,
    )
