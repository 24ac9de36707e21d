"""Tiny random GGUFs for the llama.cpp engine's tests, beyond reference/tiny_model.py's llama: a
Gemma 3 with a short sliding window (its sliding-window layers get a second KV cache of their
own, with its own cell order), and two to be refused: a gpt-oss (attention sinks: a row over the
context sums to less than 1) and a Mamba (recurrent: no attention at all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from halo_client.reference.tiny_model import MERGES, SPECIALS
from halo_client.reference.tokenizer import _byte_decoder


def _tokenizer(writer: object) -> int:
    from gguf import GGUFWriter

    assert isinstance(writer, GGUFWriter)
    byte_symbols = sorted(_byte_decoder(), key=lambda ch: _byte_decoder()[ch])
    tokens = list(SPECIALS) + byte_symbols + ["".join(m.split(" ")) for m in MERGES]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    return len(tokens)


def write_tiny_gemma3(path: Path, *, n_layer: int = 3, n_embd: int = 32, n_head: int = 4, n_head_kv: int = 2,
                      head_dim: int = 8, n_ff: int = 64, n_swa: int = 8, swa_pattern: int = 3,
                      n_ctx: int = 4096, seed: int = 0) -> Path:
    """Gemma 3: every `swa_pattern`-th layer global, the others see the last `n_swa` positions."""
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_block_count(n_layer)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(n_swa)
    writer.add_uint32("gemma3.attention.sliding_window_pattern", swa_pattern)
    n_vocab = _tokenizer(writer)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=1.0))
    for i in range(n_layer):
        b = f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", 1 + w(n_embd, scale=0.1))
        writer.add_tensor(b + "attn_q.weight", w(n_head * head_dim, n_embd))
        writer.add_tensor(b + "attn_k.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(b + "attn_v.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(b + "attn_output.weight", w(n_embd, n_head * head_dim))
        writer.add_tensor(b + "post_attention_norm.weight", 1 + w(n_embd, scale=0.1))
        writer.add_tensor(b + "attn_q_norm.weight", 1 + w(head_dim, scale=0.1))
        writer.add_tensor(b + "attn_k_norm.weight", 1 + w(head_dim, scale=0.1))
        writer.add_tensor(b + "ffn_norm.weight", 1 + w(n_embd, scale=0.1))
        writer.add_tensor(b + "ffn_gate.weight", w(n_ff, n_embd))
        writer.add_tensor(b + "ffn_up.weight", w(n_ff, n_embd))
        writer.add_tensor(b + "ffn_down.weight", w(n_embd, n_ff))
        writer.add_tensor(b + "post_ffw_norm.weight", 1 + w(n_embd, scale=0.1))
    writer.add_tensor("output_norm.weight", 1 + w(n_embd, scale=0.1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_gpt_oss(path: Path, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, n_head_kv: int = 2,
                       head_dim: int = 8, n_expert: int = 4, n_ff: int = 16, seed: int = 0) -> Path:
    """gpt-oss: attention sinks (one learned logit per head in every softmax) and an MoE."""
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "gpt-oss")
    writer.add_block_count(n_layer)
    writer.add_context_length(1024)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_sliding_window(8)
    writer.add_expert_count(n_expert)
    writer.add_expert_used_count(2)
    writer.add_expert_feed_forward_length(n_ff)
    n_vocab = _tokenizer(writer)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd))
    for i in range(n_layer):
        b = f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", 1 + w(n_embd))
        writer.add_tensor(b + "post_attention_norm.weight", 1 + w(n_embd))
        writer.add_tensor(b + "attn_q.weight", w(n_head * head_dim, n_embd))
        writer.add_tensor(b + "attn_k.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(b + "attn_v.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(b + "attn_output.weight", w(n_embd, n_head * head_dim))
        writer.add_tensor(b + "attn_output.bias", w(n_embd))
        writer.add_tensor(b + "attn_sinks.weight", w(n_head))
        writer.add_tensor(b + "ffn_gate_inp.weight", w(n_expert, n_embd))
        writer.add_tensor(b + "ffn_gate_inp.bias", w(n_expert))
        for name in ("gate", "up"):
            writer.add_tensor(b + f"ffn_{name}_exps.weight", w(n_expert, n_ff, n_embd))
            writer.add_tensor(b + f"ffn_{name}_exps.bias", w(n_expert, n_ff))
        writer.add_tensor(b + "ffn_down_exps.weight", w(n_expert, n_embd, n_ff))
        writer.add_tensor(b + "ffn_down_exps.bias", w(n_expert, n_embd))
    writer.add_tensor("output_norm.weight", 1 + w(n_embd))
    writer.add_tensor("output.weight", w(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_mamba(path: Path, *, n_layer: int = 2, n_embd: int = 16, seed: int = 0) -> Path:
    """A recurrent model (Mamba): no attention at all."""
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    d_inner, d_conv, d_state, dt_rank = 2 * n_embd, 4, 8, 4
    writer = GGUFWriter(str(path), "mamba")
    writer.add_block_count(n_layer)
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_ssm_conv_kernel(d_conv)
    writer.add_ssm_inner_size(d_inner)
    writer.add_ssm_state_size(d_state)
    writer.add_ssm_time_step_rank(dt_rank)
    writer.add_layer_norm_rms_eps(1e-5)
    n_vocab = _tokenizer(writer)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd))
    for i in range(n_layer):
        b = f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", 1 + w(n_embd))
        writer.add_tensor(b + "ssm_in.weight", w(2 * d_inner, n_embd))
        writer.add_tensor(b + "ssm_conv1d.weight", w(d_inner, d_conv))
        writer.add_tensor(b + "ssm_conv1d.bias", w(d_inner))
        writer.add_tensor(b + "ssm_x.weight", w(dt_rank + 2 * d_state, d_inner))
        writer.add_tensor(b + "ssm_dt.weight", w(d_inner, dt_rank))
        writer.add_tensor(b + "ssm_dt.bias", w(d_inner))
        writer.add_tensor(b + "ssm_a", -np.abs(w(d_inner, d_state)) - 0.1)
        writer.add_tensor(b + "ssm_d", w(d_inner))
        writer.add_tensor(b + "ssm_out.weight", w(n_embd, d_inner))
    writer.add_tensor("output_norm.weight", 1 + w(n_embd))
    writer.add_tensor("output.weight", w(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
