"""The numpy llama on a tiny random model: consistency of every path, and the tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from halo_client.reference import ModelFileError, ReferenceBackend
from halo_client.reference.tiny_model import write_tiny_llama

TEXT = "the cat sat on the mat. then it ran! 😀 世界"


def naive_attention(backend: ReferenceBackend, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Recompute from scratch, one position at a time, for comparison."""
    fresh = ReferenceBackend(backend.path, n_ctx=512)
    result = fresh.prefill(ids[:1], True)
    for t in ids[1:]:
        result = fresh.decode(t, True)
    assert result.attention is not None
    return result.logits, result.attention


def test_batched_prefill_equals_incremental_decoding(tiny: ReferenceBackend) -> None:
    ids = tiny.tokenize(TEXT, False)
    batched = tiny.prefill(ids, True)
    logits, attention = naive_attention(tiny, ids)
    assert batched.attention is not None
    np.testing.assert_allclose(batched.logits, logits, atol=1e-4)
    np.testing.assert_allclose(batched.attention, attention, atol=1e-5)


def test_attention_shape_rows_and_causality(tiny: ReferenceBackend) -> None:
    ids = tiny.tokenize(TEXT, False)
    result = tiny.prefill(ids, True)
    info = tiny.model_info()
    assert result.attention is not None
    assert result.attention.shape == (info.num_layers, info.num_attention_heads, len(ids))
    np.testing.assert_allclose(result.attention.sum(-1), 1.0, atol=1e-5)
    assert (result.attention >= 0).all()
    # GQA: heads sharing a KV head differ only by their queries; the 4 query heads are distinct
    assert not np.allclose(result.attention[0, 0], result.attention[0, 1])


def test_prefix_reuse_and_divergence_give_fresh_results(tiny: ReferenceBackend) -> None:
    ids = tiny.tokenize(TEXT, False)
    tiny.prefill(ids[:10], True)
    extended = tiny.prefill(ids, True)  # reuses 10 cached positions
    pruned = ids[:5] + ids[9:]
    after_prune = tiny.prefill(pruned, True)  # diverges at 5: recomputes from there
    for sequence, got in ((ids, extended), (pruned, after_prune)):
        logits, attention = naive_attention(tiny, sequence)
        assert got.attention is not None
        np.testing.assert_allclose(got.logits, logits, atol=1e-4)
        np.testing.assert_allclose(got.attention, attention, atol=1e-5)
    same = tiny.prefill(pruned, False)  # identical request: only the last position reruns
    np.testing.assert_allclose(same.logits, after_prune.logits, atol=1e-5)


def test_tokenizer_bytes_are_exact(tiny: ReferenceBackend) -> None:
    for text in (TEXT, "<|im_start|>user\nhi<|im_end|>", "  spaces\tand\nlines  ", "🧑‍🚀 ok"):
        ids = tiny.tokenize(text, False)
        assert b"".join(tiny.token_bytes(t) for t in ids) == text.encode()
    special = tiny.tokenize("<|im_start|>user\nhi<|im_end|>", True)
    assert special[0] == 1 and special[-1] == 2  # parsed into special tokens
    assert 1 not in tiny.tokenize("<|im_start|>", False)


def test_tied_embeddings(tmp_path: Path) -> None:
    backend = ReferenceBackend(write_tiny_llama(tmp_path / "tied.gguf", tied=True), n_ctx=64)
    result = backend.prefill([5, 6, 7], False)
    assert result.logits.shape == (backend.model_info().vocab_size,)


def test_other_architectures_are_refused_clearly(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "other.gguf"
    writer = GGUFWriter(str(path), "mamba")
    writer.add_tensor("x", np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match=r"'mamba'.*runs llama"):
        ReferenceBackend(path)
    with pytest.raises(ModelFileError, match="no model file"):
        ReferenceBackend(tmp_path / "missing.gguf")


def test_context_limit(tiny: ReferenceBackend) -> None:
    tiny.prefill([5] * 500, False)
    with pytest.raises(ValueError, match="context"):
        tiny.prefill([5] * 600, False)
