"""A llama forward pass in numpy, with a KV cache and exact post-softmax attention.

RMSNorm, RoPE (llama.cpp's "normal" mode: adjacent pairs, which is what GGUF's permuted Q/K
rows expect; with the file's base, linear scale and Llama 3 `rope_freqs` factors),
grouped-query attention (query head h reads KV head h // (n_head / n_head_kv)), SwiGLU,
tied or untied output. Prompts run as matrix-matrix products; a generated token is one more
row. The attention of the newest position (or of the last few, `forward_rows`) is returned for
every layer and query head, post-softmax, so it is the exact reference for what a server should
export.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from halo_client.reference.gguf_model import GGUFModel, LlamaParams
from halo_client.reference.threads import BlasThreads

F32 = npt.NDArray[np.float32]
#: queries of a long prompt are processed in blocks, so the score matrix stays small
QUERY_BLOCK = 512


#: "f32": exact attention. "f16": the arithmetic of llama.cpp's default F16 KV cache without flash
#: attention: K and V are stored as float16, and its F16 matmuls round their other operand (the
#: query, and the attention weights multiplied into V) to float16 as well. Used as the oracle for a
#: C++ server, it separates what the cache type explains from what a capture bug would.
KVCacheType = Literal["f32", "f16"]


def _round_f16(x: F32) -> F32:
    out: F32 = x.astype(np.float16).astype(np.float32)
    return out


class LlamaModel:
    def __init__(self, model: GGUFModel, n_ctx: int, kv_cache: KVCacheType = "f32",
                 threads: BlasThreads | None = None) -> None:
        if kv_cache not in ("f32", "f16"):
            raise ValueError(f"kv_cache must be 'f32' or 'f16', not {kv_cache!r}")
        #: BLAS threads per pass: one for a generated token, the library's count for a prompt
        self.threads = threads if threads is not None else BlasThreads()
        self.kv_f16 = kv_cache == "f16"
        p = self.params = model.params
        w = model.weights
        self.n_ctx = n_ctx
        self.embedding = w["token_embd.weight"]  # [vocab, n_embd]
        self.output = w.get("output.weight", self.embedding)  # tied when absent
        self.output_norm = w["output_norm.weight"]
        self.layers = []
        for i in range(p.n_layer):
            b = f"blk.{i}."
            wq, wk, wv = w[b + "attn_q.weight"], w[b + "attn_k.weight"], w[b + "attn_v.weight"]
            self.layers.append({
                "attn_norm": w[b + "attn_norm.weight"],
                "qkv": np.ascontiguousarray(np.concatenate([wq, wk, wv]).T),  # one matmul for q, k, v
                "wo": np.ascontiguousarray(w[b + "attn_output.weight"].T),
                "ffn_norm": w[b + "ffn_norm.weight"],
                "gate_up": np.ascontiguousarray(np.concatenate([w[b + "ffn_gate.weight"], w[b + "ffn_up.weight"]]).T),
                "down": np.ascontiguousarray(w[b + "ffn_down.weight"].T),
            })
        hd = p.head_dim
        self.k_cache = np.zeros((p.n_layer, p.n_head_kv, n_ctx, hd), np.float32)
        self.v_cache = np.zeros((p.n_layer, p.n_head_kv, n_ctx, hd), np.float32)
        half = p.rope_dim // 2
        inv_freq = 1.0 / (p.rope_freq_base ** (np.arange(half, dtype=np.float64) * 2 / p.rope_dim))
        factors = w.get("rope_freqs.weight")  # Llama 3.1+: per-frequency divisors, as llama.cpp applies them
        if factors is not None:
            inv_freq = inv_freq / factors.astype(np.float64).reshape(-1)[:half]
        angles = np.outer(np.arange(n_ctx, dtype=np.float64) * p.rope_freq_scale, inv_freq)
        self.cos, self.sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        self.length = 0  # positions held in the cache

    def _rope(self, x: F32, pos: npt.NDArray[np.int64]) -> F32:
        """x: [T, heads, head_dim]; rotate adjacent pairs of the first rope_dim dims."""
        p = self.params
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        rot = x[..., : p.rope_dim]
        even, odd = rot[..., 0::2], rot[..., 1::2]
        out: F32 = x.copy()
        out[..., 0 : p.rope_dim : 2] = even * cos - odd * sin
        out[..., 1 : p.rope_dim : 2] = even * sin + odd * cos
        return out

    @staticmethod
    def _rmsnorm(x: F32, weight: F32, eps: float) -> F32:
        ms = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True)
        out: F32 = (x / np.sqrt(ms + eps)) * weight
        return out

    def forward(self, tokens: list[int], want_attention: bool) -> tuple[F32, F32 | None]:
        """Append `tokens` at the cache's end; logits `[vocab]` and attention `[layers, heads, ctx]`
        of the last of them."""
        logits, attention = self.forward_rows(tokens, 1, want_attention)
        return logits[0], None if attention is None else attention[:, :, 0]

    def forward_rows(self, tokens: list[int], rows: int, want_attention: bool) -> tuple[F32, F32 | None]:
        """Append `tokens` at the cache's end; logits `[rows, vocab]` and attention
        `[layers, heads, rows, ctx]` of the last `rows` of them (at most all of them). Row r's
        attention covers the columns it can see; later columns are 0.

        One pass for a whole teacher-forced reply: what a token-by-token decode would give for
        each of its positions, at the cost of a prompt."""
        with self.threads.for_rows(len(tokens)):
            return self._forward_rows(tokens, rows, want_attention)

    def _forward_rows(self, tokens: list[int], rows: int, want_attention: bool) -> tuple[F32, F32 | None]:
        p: LlamaParams = self.params
        start, t = self.length, len(tokens)
        if t == 0:
            raise ValueError("forward needs at least one token")
        if rows < 1:
            raise ValueError(f"rows must be at least 1, not {rows}")
        if start + t > self.n_ctx:
            raise ValueError(f"{start + t} positions exceed the context of {self.n_ctx}")
        rows = min(rows, t)
        first_row = t - rows  # index in `tokens` of the first row returned
        hd, nh, nkv = p.head_dim, p.n_head, p.n_head_kv
        group = nh // nkv
        pos = np.arange(start, start + t)
        x = self.embedding[np.asarray(tokens)]
        attention = np.empty((p.n_layer, nh, rows, start + t), np.float32) if want_attention else None
        scale = np.float32(1.0 / np.sqrt(hd))
        for li, layer in enumerate(self.layers):
            h = self._rmsnorm(x, layer["attn_norm"], p.rms_eps)
            qkv = h @ layer["qkv"]
            q = qkv[:, : nh * hd].reshape(t, nh, hd)
            k = qkv[:, nh * hd : (nh + nkv) * hd].reshape(t, nkv, hd)
            v = qkv[:, (nh + nkv) * hd :].reshape(t, nkv, hd)
            q, k = self._rope(q, pos), self._rope(k, pos)
            if self.kv_f16:
                q, k, v = _round_f16(q), _round_f16(k), _round_f16(v)
            self.k_cache[li, :, start : start + t] = k.transpose(1, 0, 2)
            self.v_cache[li, :, start : start + t] = v.transpose(1, 0, 2)
            keys = self.k_cache[li, :, : start + t]  # [nkv, ctx, hd]
            values = self.v_cache[li, :, : start + t]
            # [nkv, group, t, hd]: query head h = g * group + j reads KV head g
            qg = q.transpose(1, 0, 2).reshape(nkv, group, t, hd)
            out = np.empty((nkv, group, t, hd), np.float32)
            for a in range(0, t, QUERY_BLOCK):
                b = min(a + QUERY_BLOCK, t)
                scores = np.matmul(qg[:, :, a:b], keys[:, None].transpose(0, 1, 3, 2)) * scale  # [nkv,g,blk,ctx]
                # causal: query at position start+i sees keys 0..start+i
                block_rows = np.arange(start + a, start + b)[:, None]
                scores = np.where(np.arange(start + t)[None, :] <= block_rows, scores, -np.inf)
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                weights = _round_f16(scores) if self.kv_f16 else scores
                out[:, :, a:b] = np.matmul(weights, values[:, None])
                if attention is not None and b > first_row:
                    lo = max(a, first_row)
                    attention[li, :, lo - first_row : b - first_row] = \
                        scores[:, :, lo - a : b - a].reshape(nh, b - lo, start + t)
            attn = out.reshape(nh, t, hd).transpose(1, 0, 2).reshape(t, nh * hd)
            x = x + attn @ layer["wo"]
            h = self._rmsnorm(x, layer["ffn_norm"], p.rms_eps)
            gate_up = h @ layer["gate_up"]
            gate, up = gate_up[:, : p.n_ff], gate_up[:, p.n_ff :]
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ layer["down"]
        last = self._rmsnorm(x[first_row:], self.output_norm, p.rms_eps)
        logits = (last @ self.output.T).astype(np.float32, copy=False)
        self.length = start + t
        return logits, attention

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (the cache keeps the common prefix)."""
        self.length = min(self.length, length)
