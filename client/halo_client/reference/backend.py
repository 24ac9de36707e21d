"""`ReferenceBackend`: the numpy llama as a `ModelBackend` for the contract's server."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from halo_client.messages import AttentionSupport, ModelInfo
from halo_client.reference.gguf_model import load_gguf
from halo_client.reference.llama import KVCacheType, LlamaModel
from halo_client.reference.tokenizer import GGUFTokenizer
from halo_client.serving.backend import ForwardResult


class ReferenceBackend:
    """Implements `ModelBackend`. A request that extends the cached sequence computes only the
    new tokens; one that diverges recomputes from the first differing position.

    `n_ctx` is the server's context (capped at the model's trained context; 0 = that). The KV
    cache for it is allocated up front: 2 x layers x kv_heads x n_ctx x head_dim float32.
    `kv_cache="f16"` reproduces the rounding of llama.cpp's default F16 KV cache (see `KVCacheType`).
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 4096,
                 progress: Callable[[str], None] | None = None, kv_cache: KVCacheType = "f32") -> None:
        model = load_gguf(path, progress)
        self.path = Path(path)
        self.params = model.params
        self.n_ctx = min(n_ctx, model.params.n_ctx_train) if n_ctx > 0 else model.params.n_ctx_train
        self.tokenizer = GGUFTokenizer(model.tokenizer)
        self.model = LlamaModel(model, self.n_ctx, kv_cache)
        self.chat_template = model.chat_template
        self._sequence: list[int] = []
        self._info = self._make_info()

    @classmethod
    def from_path(cls, path: str | Path, *, n_ctx: int = 4096,
                  progress: Callable[[str], None] | None = None) -> ReferenceBackend:
        """The backend for any llama-family GGUF (`ModelFileError` for anything else)."""
        return cls(path, n_ctx=n_ctx, progress=progress)

    @classmethod
    def load_default(cls, *, n_ctx: int = 4096,
                     progress: Callable[[str], None] | None = None) -> ReferenceBackend:
        """SmolLM2-135M-Instruct, fetched and verified on first use, from the cache afterwards."""
        from halo_client.reference.model_store import default_model

        path = default_model(progress) if progress is not None else default_model()
        return cls(path, n_ctx=n_ctx, progress=progress)

    def _make_info(self) -> ModelInfo:
        p, t = self.params, self.tokenizer.data
        return ModelInfo(
            model_name=self.path.stem, architecture="llama", vocab_size=self.tokenizer.vocab_size,
            num_layers=p.n_layer, num_attention_heads=p.n_head, num_key_value_heads=p.n_head_kv,
            hidden_size=p.n_embd, max_context_length=self.n_ctx, max_trained_context=p.n_ctx_train,
            bos_token_id=t.bos_id, eos_token_id=t.eos_id, eot_token_id=t.eot_id,
            rope_freq_base=p.rope_freq_base, rope_freq_scale=p.rope_freq_scale,
            chat_template=self.chat_template, attention_api_version=1,
            attention=AttentionSupport(available=True, reason=None, dtypes=["float32", "float16"],
                                       layouts=["full", "layer_stats", "model_stats"]),
        )

    def model_info(self) -> ModelInfo:
        return self._info

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.token_bytes(token_id)

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        logits, attention = self.prefill_rows(input_ids, 1, want_attention)
        return ForwardResult(logits[0], None if attention is None else attention[:, :, 0])

    def prefill_rows(self, input_ids: Sequence[int], rows: int, want_attention: bool) -> tuple[
            npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """`prefill`, with the logits `[rows, vocab]` and attention `[layers, heads, rows, ctx]` of
        the last `rows` positions (`LlamaModel.forward_rows`): a teacher-forced reply in one pass.
        Positions shared with the cached sequence are not recomputed, except the rows asked for."""
        ids = list(input_ids)
        if not ids:
            raise ValueError("prefill needs at least one token")
        rows = max(1, min(rows, len(ids)))
        common = 0
        for a, b in zip(self._sequence, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - rows, self.model.length)  # the rows asked for must run
        self.model.truncate(common)
        self._sequence = ids[:common]  # what the cache holds, should the forward pass fail
        logits, attention = self.model.forward_rows(ids[common:], rows, want_attention)
        self._sequence = ids
        return logits, attention

    def reset(self) -> None:
        """Forget the cached sequence (the next prefill computes every position)."""
        self.model.truncate(0)
        self._sequence = []

    def decode(self, token_id: int, want_attention: bool) -> ForwardResult:
        logits, attention = self.model.forward([token_id], want_attention)
        self._sequence.append(token_id)
        return ForwardResult(logits, attention)
