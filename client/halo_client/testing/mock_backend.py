"""A model-shaped test double: toy tokenizer, canned replies, synthetic attention.

The attention it produces obeys every rule of the contract (shape, ctx, rows summing to 1,
columns in input order) and depends on the token at each column, so a client that maps
columns to the wrong tokens sees the wrong numbers. It is cheap: frames come from an
incrementally kept weight buffer, one multiply per frame, so benchmarks measure the transport.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from halo_client.chatml import CHATML
from halo_client.messages import AttentionSupport, ModelInfo
from halo_client.serving.backend import ForwardResult
from halo_client.serving.validation import RequestRejected
from halo_client.testing import toy_tokenizer as tok

REPLIES: Final = (
    "Sure. The mock model has no knowledge, but its replies have sentences. "
    "Each one ends with a period! Does it work? Yes.",
    "Hello! I am a mock model. I can only say what I was made to say. "
    "Still, every token I make has attention over the context.",
    "Yes. Remember the number 3.14, e.g. for a test. The end is near... "
    "Then the reply stops.",
)

_NEWLINE: Final = tok.tokenize("\n")[0]
_ROLES: Final = {tuple(tok.tokenize(r)): r for r in ("system", "user", "assistant")}
_PEAK: Final = 12.0
_SINK: Final = 4.0  # first column: the "attention sink" real models show
_RECENT: Final = 4  # the newest columns get extra weight, as local attention does


def check_chatml(input_ids: Sequence[int]) -> None:
    """Raise `RequestRejected` unless `input_ids` is well-formed ChatML, as a strict server would.

    Every message is `<|im_start|>ROLE\\n CONTENT <|im_end|>\\n`; the last one may be left open
    (the generation prompt, or a reply being continued). Content holds no template tokens.
    """
    ids = list(input_ids)
    if not ids or ids[0] != tok.IM_START_ID:
        raise RequestRejected("INVALID_REQUEST", "ChatML: input_ids must start with <|im_start|>")
    starts = [i for i, t in enumerate(ids) if t == tok.IM_START_ID] + [len(ids)]
    for n, (a, b) in enumerate(itertools.pairwise(starts)):
        block = ids[a + 1 : b]
        role = next((r for key, r in _ROLES.items() if tuple(block[: len(key)]) == key), None)
        if role is None:
            raise RequestRejected("INVALID_REQUEST", f"ChatML: message {n} has no role after <|im_start|>")
        body = block[len(tok.tokenize(role)) :]
        if not body or body[0] != _NEWLINE:
            raise RequestRejected("INVALID_REQUEST", f"ChatML: message {n} lacks the newline after its role")
        last = b == len(ids)
        closed = len(body) >= 3 and body[-2:] == [tok.IM_END_ID, _NEWLINE]
        content = body[1:-2] if closed else body[1:]
        if not closed and not last:
            raise RequestRejected("INVALID_REQUEST", f"ChatML: message {n} is not closed by <|im_end|>\\n")
        if tok.IM_END_ID in content or tok.BOS_ID in content:
            raise RequestRejected("INVALID_REQUEST", f"ChatML: message {n} has a template token inside")


class MockBackend:
    """Implements `ModelBackend`."""

    def __init__(
        self,
        *,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        max_context_length: int = 4096,
        strict_template: bool = False,
        attention_available: bool = True,
    ) -> None:
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.max_context_length = max_context_length
        self.strict_template = strict_template
        self.attention_available = attention_available
        rng = np.random.default_rng(1234)
        # per (layer, head, token id) affinity: which tokens each head likes to look at
        self._affinity = np.exp(rng.normal(0.0, 1.0, (num_layers, num_heads, tok.VOCAB_SIZE)))
        self._affinity = self._affinity.astype(np.float32)
        self._weights = np.zeros((num_layers, num_heads, max_context_length), np.float32)
        self._sums = np.zeros((num_layers, num_heads, 1), np.float64)
        # frames are written into one reused buffer: a fresh multi-megabyte array per token
        # costs more in page faults than the arithmetic (ForwardResult allows the reuse)
        self._out = np.empty(num_layers * num_heads * max_context_length, np.float32)
        self._seq: list[int] = []
        self._reply: list[int] = []
        self._cursor = 0
        self.received: list[list[int]] = []  # every prompt, for tests

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            model_name="halo-mock",
            architecture="mock",
            vocab_size=tok.VOCAB_SIZE,
            num_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            hidden_size=64,
            max_context_length=self.max_context_length,
            max_trained_context=self.max_context_length,
            bos_token_id=tok.BOS_ID,
            eos_token_id=tok.IM_END_ID,
            eot_token_id=tok.IM_END_ID,
            rope_freq_base=10000.0,
            rope_freq_scale=1.0,
            chat_template=CHATML,
            attention_api_version=1,
            attention=AttentionSupport(
                available=self.attention_available,
                reason=None if self.attention_available else "the mock was started without attention",
                dtypes=["float32", "float16"],
                layouts=["full", "layer_stats", "model_stats"],
            ),
        )

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return tok.tokenize(text, add_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        return tok.token_bytes(token_id)

    # -------------------------------------------------------------------- forward

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        if self.strict_template:
            check_chatml(input_ids)
        self.received.append(list(input_ids))
        self._seq = []
        self._sums[:] = 0.0
        self._append(list(input_ids))
        reply = REPLIES[sum(input_ids) % len(REPLIES)]
        self._reply = [*tok.tokenize(reply, add_special_tokens=False), tok.IM_END_ID]
        self._cursor = 0
        return self._result(want_attention)

    def decode(self, token_id: int, want_attention: bool) -> ForwardResult:
        self._append([token_id])
        self._cursor += 1
        return self._result(want_attention)

    def _append(self, ids: list[int]) -> None:
        start = len(self._seq)
        self._seq.extend(ids)
        cols = self._affinity[:, :, np.asarray(ids, dtype=np.int64)]
        if start == 0:
            cols[:, :, 0] *= _SINK
        self._weights[:, :, start : start + len(ids)] = cols
        self._sums += cols.sum(axis=2, keepdims=True, dtype=np.float64)

    def _logits(self) -> npt.NDArray[np.float32]:
        vocab = tok.VOCAB_SIZE
        logits = ((np.arange(vocab) * 7919 + self._cursor * 31) % 100 / 100.0).astype(np.float32)
        target = self._reply[min(self._cursor, len(self._reply) - 1)]
        logits[target] += _PEAK
        return logits

    def _result(self, want_attention: bool) -> ForwardResult:
        if not want_attention:
            return ForwardResult(self._logits(), None)
        ctx = len(self._seq)
        k = min(_RECENT, ctx)
        recent = self._weights[:, :, ctx - k : ctx]
        extra = recent * 2.0  # the newest columns count three times
        total = self._sums + extra.sum(axis=2, keepdims=True, dtype=np.float64)
        inv = (1.0 / total).astype(np.float32)
        frame = self._out[: self.num_layers * self.num_heads * ctx].reshape(
            self.num_layers, self.num_heads, ctx)
        np.multiply(self._weights[:, :, :ctx], inv, out=frame)
        frame[:, :, ctx - k :] += extra * inv
        return ForwardResult(self._logits(), frame)
