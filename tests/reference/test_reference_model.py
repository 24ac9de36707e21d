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


def test_rows_give_what_decoding_one_token_at_a_time_gives(tiny: ReferenceBackend) -> None:
    """A teacher-forced reply in one pass: every row's logits and attention are those of the
    decode step at that position; a prefix in the cache is reused, and nothing more."""
    ids = tiny.tokenize(TEXT, False)
    rows = 7
    fresh = ReferenceBackend(tiny.path, n_ctx=512)
    step = fresh.prefill(ids[: len(ids) - rows + 1], True)
    expected = [step]
    for t in ids[len(ids) - rows + 1 :]:
        expected.append(fresh.decode(t, True))
    tiny.prefill(ids[:10], False)
    logits, attention = tiny.prefill_rows(ids, rows, True)
    assert logits.shape == (rows, tiny.model_info().vocab_size)
    assert attention is not None and attention.shape[2:] == (rows, len(ids))
    for r, want in enumerate(expected):
        assert want.attention is not None
        np.testing.assert_allclose(logits[r], want.logits, atol=1e-4)
        ctx = len(ids) - rows + 1 + r
        np.testing.assert_allclose(attention[:, :, r, :ctx], want.attention, atol=1e-5)
        assert not attention[:, :, r, ctx:].any()  # causal: later columns are 0
    again, none = tiny.prefill_rows(ids, rows, False)  # all cached: only the rows rerun
    assert none is None
    np.testing.assert_allclose(again, logits, atol=1e-5)
    assert tiny.prefill_rows(ids[:3], 10, False)[0].shape[0] == 3  # no more rows than tokens
    with pytest.raises(ValueError, match="rows"):
        tiny.model.forward_rows(ids[:2], 0, False)


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


def test_prefill_computes_only_the_new_suffix(tiny: ReferenceBackend) -> None:
    ids = tiny.tokenize(TEXT, False)
    computed: list[int] = []
    forward = tiny.model.forward_rows  # every path (prefill, rows, decode) runs through it

    def counting(tokens: list[int], rows: int, want_attention: bool) -> tuple[np.ndarray, np.ndarray | None]:
        computed.append(len(tokens))
        return forward(tokens, rows, want_attention)

    tiny.model.forward_rows = counting  # type: ignore[method-assign]
    tiny.prefill(ids[:10], False)
    tiny.prefill(ids, True)  # extends: only the new tokens
    tiny.decode(7, True)
    tiny.prefill([*ids, 7, 8, 9], True)  # extends what decode appended
    tiny.prefill(ids[:4] + ids[6:], True)  # diverges at 4
    tiny.prefill(ids[:4] + ids[6:], True)  # the same again: the last position only
    tiny.prefill(ids[:3], True)  # a prefix of what is cached: the last position only
    assert computed == [10, len(ids) - 10, 1, 2, len(ids) - 6, 1, 1]


def test_a_failed_prefill_leaves_a_usable_cache(tiny: ReferenceBackend) -> None:
    ids = tiny.tokenize(TEXT, False)
    tiny.prefill(ids, False)
    with pytest.raises(ValueError, match="context"):
        tiny.prefill(ids[:5] + [9] * 600, True)
    got = tiny.prefill([*ids[:8], 9, 9], True)
    logits, attention = naive_attention(tiny, [*ids[:8], 9, 9])
    assert got.attention is not None
    np.testing.assert_allclose(got.logits, logits, atol=1e-4)
    np.testing.assert_allclose(got.attention, attention, atol=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        tiny.prefill([], False)


def test_construction_helpers(tiny_path: Path) -> None:
    backend = ReferenceBackend.from_path(tiny_path, n_ctx=0)  # 0: the trained context
    info = backend.model_info()
    assert info.max_context_length == info.max_trained_context == 512
    shape = (info.architecture, info.num_layers, info.num_attention_heads, info.num_key_value_heads)
    assert shape == ("llama", 2, 4, 2)
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert (info.bos_token_id, info.eos_token_id, info.eot_token_id) == (0, 2, 2)
    assert info.attention.available


def test_rope_frequency_factors_match_linear_scaling(tmp_path: Path) -> None:
    """Llama 3's rope_freqs divide every frequency, as a linear RoPE scale multiplies positions."""
    ids = list(range(5, 60))
    plain = ReferenceBackend(write_tiny_llama(tmp_path / "plain.gguf"), n_ctx=64).prefill(ids, True)
    factors = ReferenceBackend(write_tiny_llama(tmp_path / "f.gguf", rope_freq_factors=[4.0] * 4), n_ctx=64)
    linear = ReferenceBackend(write_tiny_llama(tmp_path / "l.gguf", rope_linear_factor=4.0), n_ctx=64)
    assert linear.model_info().rope_freq_scale == 0.25
    a, b = factors.prefill(ids, True), linear.prefill(ids, True)
    assert a.attention is not None and b.attention is not None and plain.attention is not None
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-6)
    assert not np.allclose(a.logits, plain.logits, atol=1e-3)  # and the factors are not ignored


def test_unsupported_rope_scaling_is_refused(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "yarn.gguf", rope_linear_factor=4.0, rope_scaling_type="yarn")
    with pytest.raises(ModelFileError, match=r"'yarn' RoPE scaling.*plain and linear"):
        ReferenceBackend(path)


SPM_CASES = [
    # text, ids with add_special_tokens (BOS first, as the file says), exact as llama.cpp tokenizes
    ("the cat", [1, 271, 274]),
    ("the cat sat on it, café 😀", [1, 271, 274, 275, 272, 259, 276, 279, 260, 47, 273, 264, 105, 198, 172, 259,
                                    243, 162, 155, 131]),
    (" the  cat in", [1, 259, 271, 259, 274, 280]),  # the space prefix comes on top of a leading space
    ("<s>the<|im_start|>the</s>", [1, 1, 271, 281, 271, 2]),  # after a special token: the space prefix again
    ("", [1]),
]


@pytest.mark.parametrize(("text", "expected"), SPM_CASES)
def test_sentencepiece_tokenizer(tmp_path_factory: pytest.TempPathFactory, text: str, expected: list[int]) -> None:
    backend = ReferenceBackend(write_tiny_llama(tmp_path_factory.mktemp("spm") / "spm.gguf", tokenizer="llama"),
                               n_ctx=64)
    assert backend.tokenize(text, True) == expected
    plain = backend.tokenize(text, False)
    if "<s>" not in text:
        assert plain == expected[1:]
        pieces = b"".join(backend.token_bytes(t) for t in plain)
        assert pieces == (" " + text).encode() if text else pieces == b""  # the prefix space is a real byte
    else:  # control tokens are text without add_special_tokens; user-defined ones are always parsed
        assert 1 not in plain and 2 not in plain and 281 in plain
    assert backend.token_bytes(1) == b"<s>"
    assert backend.token_bytes(3 + 0xF0) == b"\xf0"  # <0xF0>: a byte token stands for that byte


def test_unsupported_tokenizer_is_refused(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "t.gguf")
    length = (4).to_bytes(8, "little")  # GGUF strings: u64 length, then the bytes
    path.write_bytes(path.read_bytes().replace(length + b"gpt2", length + b"bert", 1))
    with pytest.raises(ModelFileError, match=r"'bert'.*gpt2.*llama"):
        ReferenceBackend(path)


def test_f16_kv_cache_mode_rounds_what_llama_cpp_rounds(tiny_path: Path) -> None:
    """kv_cache="f16" stores K and V as float16 values; the attention moves a little, and stays a distribution."""
    exact = ReferenceBackend(tiny_path, n_ctx=512)
    f16 = ReferenceBackend(tiny_path, n_ctx=512, kv_cache="f16")
    ids = exact.tokenize(TEXT, False)
    a, b = exact.prefill(ids, True), f16.prefill(ids, True)
    assert a.attention is not None and b.attention is not None
    cached = f16.model.k_cache[:, :, : len(ids)]
    np.testing.assert_array_equal(cached, cached.astype(np.float16).astype(np.float32))
    assert not np.array_equal(exact.model.k_cache[:, :, : len(ids)], cached)
    difference = np.abs(a.attention - b.attention).max()
    assert 0 < difference < 5e-2
    np.testing.assert_allclose(b.attention.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="kv_cache"):
        ReferenceBackend(tiny_path, n_ctx=512, kv_cache="q8")  # type: ignore[arg-type]


def test_end_of_turn_rule() -> None:
    """The GGUF key, else llama.cpp's end-of-turn texts in llama.cpp's order (as the KoboldCPP patch)."""
    from halo_client.reference.gguf_model import end_of_turn_id

    smollm2 = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a"]
    assert end_of_turn_id(None, smollm2) == 2  # not <|endoftext|>, which llama.cpp may pick
    assert end_of_turn_id(7, smollm2) == 7
    assert end_of_turn_id(None, ["<|im_end|>", "x", "<|eot_id|>"]) == 2
    assert end_of_turn_id(None, ["x", "<|endoftext|>"]) == 1
    assert end_of_turn_id(None, ["x", "<EOT>", "<end_of_turn>"]) == 2
    assert end_of_turn_id(None, ["<s>", "</s>"]) is None
