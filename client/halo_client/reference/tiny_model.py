"""A tiny random llama written as an F32 GGUF: a real model file, small enough for fast tests.

It has a byte-level BPE vocabulary (the 256 byte symbols, a few merges, ChatML special tokens)
and a ChatML chat template, so everything that runs SmolLM2 runs it, in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from halo_client.conversation.template import CHATML
from halo_client.reference.tokenizer import _byte_decoder

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "a n", "Ġ w", "r e", "Ġ o", "e n", "Ġ i")


def write_tiny_llama(path: str | Path, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, n_head_kv: int = 2,
                     n_ff: int = 64, n_ctx: int = 512, seed: int = 0, tied: bool = False) -> Path:
    from gguf import GGUFWriter

    path = Path(path)
    rng = np.random.default_rng(seed)
    byte_symbols = sorted(_byte_decoder(), key=lambda ch: _byte_decoder()[ch])
    tokens = list(SPECIALS) + byte_symbols + ["".join(m.split(" ")) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_block_count(n_layer)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def w(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=1.0))
    for i in range(n_layer):
        b = f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", 1 + w(n_embd, scale=0.1))
        writer.add_tensor(b + "attn_q.weight", w(n_embd, n_embd, scale=0.5))
        writer.add_tensor(b + "attn_k.weight", w(n_head_kv * head_dim, n_embd, scale=0.5))
        writer.add_tensor(b + "attn_v.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(b + "attn_output.weight", w(n_embd, n_embd))
        writer.add_tensor(b + "ffn_norm.weight", 1 + w(n_embd, scale=0.1))
        writer.add_tensor(b + "ffn_gate.weight", w(n_ff, n_embd))
        writer.add_tensor(b + "ffn_up.weight", w(n_ff, n_embd))
        writer.add_tensor(b + "ffn_down.weight", w(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", 1 + w(n_embd, scale=0.1))
    if not tied:
        writer.add_tensor("output.weight", w(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
