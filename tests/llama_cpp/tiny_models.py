"""Tiny random GGUFs for the llama.cpp engine's tests, beyond reference/tiny_model.py's llama: a
Gemma 3 with a short sliding window (its sliding-window layers get a second KV cache of their
own, with its own cell order), and two to be refused: a gpt-oss (attention sinks: a row over the
context sums to less than 1) and a Mamba (recurrent: no attention at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from halo_client.reference.tiny_model import MERGES, SPECIALS
from halo_client.reference.tokenizer import _byte_decoder


class _Tiny:
    """One GGUF being written: the hyper-parameters every model here has, the tiny byte-level BPE
    vocabulary, random F32 weights."""

    def __init__(self, path: Path, arch: str, *, n_layer: int, n_embd: int, n_ctx: int, seed: int,
                 n_ff: int = 0, n_head: int = 0, n_head_kv: int = 0, head_dim: int = 0, eps: float = 1e-5) -> None:
        from gguf import GGUFWriter

        self.path, self.n_embd = path, n_embd
        self.rng = np.random.default_rng(seed)
        self.writer: Any = GGUFWriter(str(path), arch)
        w = self.writer
        w.add_block_count(n_layer)
        w.add_context_length(n_ctx)
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        if n_head:
            w.add_head_count_kv(n_head_kv)
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
            w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(eps)
        byte_symbols = sorted(_byte_decoder(), key=lambda ch: _byte_decoder()[ch])
        tokens = list(SPECIALS) + byte_symbols + ["".join(m.split(" ")) for m in MERGES]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
        w.add_token_merges(list(MERGES))
        w.add_bos_token_id(0)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        self.n_vocab = len(tokens)
        self.tensor("token_embd.weight", self.n_vocab, n_embd, scale=1.0)

    def tensor(self, name: str, *shape: int, scale: float = 0.2, offset: float = 0.0) -> None:
        self.writer.add_tensor(name, (offset + self.rng.standard_normal(shape) * scale).astype(np.float32))

    def attention(self, b: str, n_head: int, n_head_kv: int, head_dim: int, scale: float = 0.2) -> None:
        self.tensor(b + "attn_q.weight", n_head * head_dim, self.n_embd, scale=scale)
        self.tensor(b + "attn_k.weight", n_head_kv * head_dim, self.n_embd, scale=scale)
        self.tensor(b + "attn_v.weight", n_head_kv * head_dim, self.n_embd, scale=scale)
        self.tensor(b + "attn_output.weight", self.n_embd, n_head * head_dim, scale=scale)

    def norm(self, name: str, size: int = 0) -> None:
        self.tensor(name, size or self.n_embd, scale=0.1, offset=1.0)

    def finish(self, output: bool = True) -> Path:
        self.norm("output_norm.weight")
        if output:
            self.tensor("output.weight", self.n_vocab, self.n_embd)
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_tensors_to_file()
        self.writer.close()
        return self.path


def write_tiny_gemma3(path: Path, *, n_layer: int = 3, n_embd: int = 32, n_head: int = 4, n_head_kv: int = 2,
                      head_dim: int = 8, n_ff: int = 64, n_swa: int = 8, swa_pattern: int = 3,
                      n_ctx: int = 4096, seed: int = 0) -> Path:
    """Gemma 3: every `swa_pattern`-th layer global, the others see the last `n_swa` positions."""
    m = _Tiny(path, "gemma3", n_layer=n_layer, n_embd=n_embd, n_ctx=n_ctx, seed=seed, n_ff=n_ff, n_head=n_head,
              n_head_kv=n_head_kv, head_dim=head_dim, eps=1e-6)
    m.writer.add_sliding_window(n_swa)
    m.writer.add_uint32("gemma3.attention.sliding_window_pattern", swa_pattern)
    for i in range(n_layer):
        b = f"blk.{i}."
        m.norm(b + "attn_norm.weight")
        m.attention(b, n_head, n_head_kv, head_dim, scale=0.3)
        m.norm(b + "post_attention_norm.weight")
        m.norm(b + "attn_q_norm.weight", head_dim)
        m.norm(b + "attn_k_norm.weight", head_dim)
        m.norm(b + "ffn_norm.weight")
        m.tensor(b + "ffn_gate.weight", n_ff, n_embd, scale=0.3)
        m.tensor(b + "ffn_up.weight", n_ff, n_embd, scale=0.3)
        m.tensor(b + "ffn_down.weight", n_embd, n_ff, scale=0.3)
        m.norm(b + "post_ffw_norm.weight")
    return m.finish(output=False)


def write_tiny_gpt_oss(path: Path, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, n_head_kv: int = 2,
                       head_dim: int = 8, n_expert: int = 4, n_ff: int = 16, seed: int = 0) -> Path:
    """gpt-oss: attention sinks (one learned logit per head in every softmax) and an MoE."""
    m = _Tiny(path, "gpt-oss", n_layer=n_layer, n_embd=n_embd, n_ctx=1024, seed=seed, n_ff=n_ff, n_head=n_head,
              n_head_kv=n_head_kv, head_dim=head_dim)
    m.writer.add_rope_dimension_count(head_dim)
    m.writer.add_sliding_window(8)
    m.writer.add_expert_count(n_expert)
    m.writer.add_expert_used_count(2)
    m.writer.add_expert_feed_forward_length(n_ff)
    for i in range(n_layer):
        b = f"blk.{i}."
        m.norm(b + "attn_norm.weight")
        m.norm(b + "post_attention_norm.weight")
        m.attention(b, n_head, n_head_kv, head_dim)
        m.tensor(b + "attn_output.bias", n_embd)
        m.tensor(b + "attn_sinks.weight", n_head)
        m.tensor(b + "ffn_gate_inp.weight", n_expert, n_embd)
        m.tensor(b + "ffn_gate_inp.bias", n_expert)
        for name in ("gate", "up"):
            m.tensor(b + f"ffn_{name}_exps.weight", n_expert, n_ff, n_embd)
            m.tensor(b + f"ffn_{name}_exps.bias", n_expert, n_ff)
        m.tensor(b + "ffn_down_exps.weight", n_expert, n_embd, n_ff)
        m.tensor(b + "ffn_down_exps.bias", n_expert, n_embd)
    return m.finish()


def write_tiny_mamba(path: Path, *, n_layer: int = 2, n_embd: int = 16, seed: int = 0) -> Path:
    """A recurrent model (Mamba): no attention at all."""
    d_inner, d_conv, d_state, dt_rank = 2 * n_embd, 4, 8, 4
    m = _Tiny(path, "mamba", n_layer=n_layer, n_embd=n_embd, n_ctx=512, seed=seed)
    m.writer.add_ssm_conv_kernel(d_conv)
    m.writer.add_ssm_inner_size(d_inner)
    m.writer.add_ssm_state_size(d_state)
    m.writer.add_ssm_time_step_rank(dt_rank)
    for i in range(n_layer):
        b = f"blk.{i}."
        m.norm(b + "attn_norm.weight")
        m.tensor(b + "ssm_in.weight", 2 * d_inner, n_embd)
        m.tensor(b + "ssm_conv1d.weight", d_inner, d_conv)
        m.tensor(b + "ssm_conv1d.bias", d_inner)
        m.tensor(b + "ssm_x.weight", dt_rank + 2 * d_state, d_inner)
        m.tensor(b + "ssm_dt.weight", d_inner, dt_rank)
        m.tensor(b + "ssm_dt.bias", d_inner)
        m.tensor(b + "ssm_a", d_inner, d_state, scale=0.2, offset=-1.0)  # (negative: a decaying state)
        m.tensor(b + "ssm_d", d_inner)
        m.tensor(b + "ssm_out.weight", n_embd, d_inner)
    return m.finish()
