"""A tiny random llama written as an F32 GGUF: a real model file, small enough for fast tests.

It has a byte-level BPE vocabulary (the 256 byte symbols, a few merges, ChatML special tokens)
and a ChatML chat template, so everything that runs SmolLM2 runs it, in milliseconds. With
`tokenizer="llama"` it has a small SentencePiece vocabulary instead (`<unk>`, `<s>`, `</s>`, the
256 `<0xXX>` byte tokens and a few scored pieces), as Llama 2 / TinyLlama GGUFs do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from halo_client.chatml import CHATML
from halo_client.reference.tokenizer import _byte_decoder

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "a n", "Ġ w", "r e", "Ġ o", "e n", "Ġ i")
#: SentencePiece pieces, best score first (scores fall with the index, as in real SPM vocabularies)
SPM_PIECES = ("\u2581", "t", "h", "e", "c", "a", "s", "o", "n", "i", "\u2581t", "he", "\u2581the", "at", "\u2581c",
              "\u2581cat", "\u2581s", "on", "in", "\u2581a", "\u2581i", "\u2581in")
SPM_SPECIALS = ("<unk>", "<s>", "</s>")
SPM_USER_DEFINED = ("<|im_start|>", "<|im_end|>")


def _spm_vocab() -> tuple[list[str], list[int], list[float]]:
    tokens = [*SPM_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *SPM_PIECES, *SPM_USER_DEFINED]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES) + [4] * len(SPM_USER_DEFINED)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(SPM_PIECES))] + [0.0] * len(SPM_USER_DEFINED)
    return tokens, types, scores


def write_tiny_llama(path: str | Path, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, n_head_kv: int = 2,
                     n_ff: int = 64, n_ctx: int = 512, seed: int = 0, tied: bool = False,
                     tokenizer: Literal["gpt2", "llama"] = "gpt2",
                     rope_freq_factors: Sequence[float] | None = None, rope_linear_factor: float | None = None,
                     rope_scaling_type: str = "linear", rope_freq_base: float = 10000.0) -> Path:
    """Write the model; returns `path`. Same arguments, same file."""
    from gguf import GGUFWriter

    path = Path(path)
    rng = np.random.default_rng(seed)
    if tokenizer == "gpt2":
        byte_symbols = sorted(_byte_decoder(), key=lambda ch: _byte_decoder()[ch])
        tokens = list(SPECIALS) + byte_symbols + ["".join(m.split(" ")) for m in MERGES]
        types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
        scores: list[float] | None = None
    else:
        tokens, types, scores = _spm_vocab()
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
    writer.add_rope_freq_base(rope_freq_base)
    writer.add_rope_dimension_count(head_dim)
    if rope_linear_factor is not None:
        writer.add_string("llama.rope.scaling.type", rope_scaling_type)
        writer.add_rope_scaling_factor(rope_linear_factor)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is None:
        writer.add_tokenizer_pre("default")
        writer.add_token_merges(list(MERGES))
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(False)
    else:
        writer.add_token_scores(scores)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_space_prefix(True)
    writer.add_chat_template(CHATML)

    def w(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=1.0))
    if rope_freq_factors is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freq_factors, np.float32))
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
