"""The llama.cpp engine (the Halo Weave libllama through ctypes) against the numpy reference and
against itself: frames are the attention llama.cpp computed, columns in position order whatever
the KV cells' order (prefix reuse, a context shift, a sliding-window cache that wraps), reduced
layouts are the reduction of the full frame, and what a frame cannot show is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from halo_client.frame import reduce_attention
from halo_client.llama_cpp import LlamaCppBackend, LlamaCppError, LlamaLibraryError
from halo_client.messages import AttentionLayout
from halo_client.reference import ReferenceBackend
from halo_client.reference.tiny_model import write_tiny_llama
from tests.llama_cpp.tiny_models import write_tiny_gemma3, write_tiny_gpt_oss, write_tiny_mamba

pytestmark = pytest.mark.process  # llama.cpp's threads; left out by make test-fast

F32 = npt.NDArray[np.float32]
TEXT = ("The cat sat on the mat. The hat is on the cat, and then the cat ran to the sea. "
        "In the end, the cat was happy at home.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_ctx=4096)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gemma3(tmp_path_factory.mktemp("gemma") / "tiny-gemma3.gguf")


def engine(llama_lib: Path, model: Path, **kw: object) -> LlamaCppBackend:
    return LlamaCppBackend(model, library=llama_lib, n_ctx=kw.pop("n_ctx", 2048), n_threads=2,  # type: ignore[arg-type]
                           **kw)  # type: ignore[arg-type]


def generate(backend: LlamaCppBackend | ReferenceBackend, ids: list[int], steps: int,
             follow: list[int] | None = None) -> tuple[list[F32], list[int]]:
    """Frames of the prefill and `steps` decodes, greedy (or the tokens of `follow`)."""
    result = backend.prefill(ids, True)
    frames, tokens = [], []
    for i in range(steps + 1):
        assert result.attention is not None
        frames.append(result.attention.copy())
        if i == steps:
            break
        token = follow[i] if follow is not None else int(np.argmax(result.logits))
        tokens.append(token)
        result = backend.decode(token, True)
    return frames, tokens


def max_diff(got: list[F32], want: list[F32]) -> float:
    assert [g.shape for g in got] == [w.shape for w in want]
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize(("export", "kv_cache", "bound"), [("on", "f16", 2e-3), ("f32kv", "f32", 5e-5)])
def test_tiny_llama_frames_equal_the_reference(llama_lib: Path, tiny: Path, export: str, kv_cache: str,
                                               bound: float) -> None:
    """Prefill and decode: the frames are the numpy reference's, which rounds K, V and the query
    to F16 as llama.cpp's default KV cache does (F32 with f32kv)."""
    ref = ReferenceBackend(tiny, n_ctx=2048, kv_cache=kv_cache)  # type: ignore[arg-type]
    ids = ref.tokenize(TEXT, False)
    with engine(llama_lib, tiny, attention_export=export) as llama:
        got, tokens = generate(llama, ids, 8)
    want, _ = generate(ref, ids, 8, follow=tokens)
    assert got[0].shape == (2, 4, len(ids))
    assert max_diff(got, want) <= bound


def test_prefix_reuse_and_a_pruned_rerequest_keep_frames_right(llama_lib: Path, tiny: Path) -> None:
    """An extended request reuses the cached prefix; a pruned one (a span dropped from the middle)
    recomputes from the first difference: both give the fresh computation's frames."""
    ref = ReferenceBackend(tiny, n_ctx=2048, kv_cache="f32")
    ids = ref.tokenize(TEXT, False)
    with engine(llama_lib, tiny, attention_export="f32kv") as llama:
        _, first = generate(llama, ids, 5)
        extended = ids + first + ref.tokenize(" And then?", False)
        got_ext, tokens_ext = generate(llama, extended, 4)
        third = len(ids) // 3
        pruned = ids[:third] + ids[2 * third:]
        got_pruned, tokens_pruned = generate(llama, pruned, 4)
    want_ext, _ = generate(ref, extended, 4, follow=tokens_ext)
    ref.reset()
    want_pruned, _ = generate(ref, pruned, 4, follow=tokens_pruned)
    assert max_diff(got_ext, want_ext) <= 5e-5
    assert max_diff(got_pruned, want_pruned) <= 5e-5


def test_context_shift_keeps_columns_in_position_order(llama_lib: Path, tiny: Path) -> None:
    """With context_shift, a pruned re-request drops the span from the KV cache and moves what
    follows down (seq_rm + seq_add): the new tokens then fill the freed cells, out of position
    order. Layer 0 depends on the tokens and their positions only, so its frames must still equal
    a fresh computation column by column; deeper layers show the shifted (not recomputed) keys."""
    ref = ReferenceBackend(tiny, n_ctx=2048, kv_cache="f32")
    ids = ref.tokenize(TEXT * 2, False)
    with engine(llama_lib, tiny, attention_export="f32kv", context_shift=True) as llama:
        generate(llama, ids, 2)
        pruned = ids[:10] + ids[40:] + ref.tokenize(" The end.", False)
        got, tokens = generate(llama, pruned, 6)
    want, _ = generate(ref, pruned, 6, follow=tokens)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.sum(axis=-1), 1.0, atol=1e-5)
    assert max(float(np.abs(g[0] - w[0]).max()) for g, w in zip(got, want, strict=True)) <= 2e-4
    # the shift was taken: layer 1 saw keys computed in the old context
    assert max(float(np.abs(g[1] - w[1]).max()) for g, w in zip(got, want, strict=True)) > 1e-3


@pytest.mark.parametrize("layout", ["layer_stats", "model_stats"])
@pytest.mark.parametrize("model", ["tiny", "gemma"])
def test_reduced_layouts_are_the_reduction_of_the_full_frame(llama_lib: Path, tiny: Path, gemma: Path,
                                                             layout: AttentionLayout, model: str) -> None:
    """Computed in the graph (per layer, and for model_stats over each cache's layers, combined in
    position order across the two caches of an iSWA model)."""
    path = tiny if model == "tiny" else gemma
    ids = [3 + (i * 7) % 250 for i in range(300)]
    with engine(llama_lib, path, n_batch=16) as llama:
        full, tokens = generate(llama, ids, 3)
        llama.set_attention_layout(layout)
        reduced, _ = generate(llama, ids, 3, follow=tokens)
    for f, r in zip(full, reduced, strict=True):
        np.testing.assert_allclose(r, reduce_attention(f, layout), atol=1e-6)


def test_sliding_window_cache_in_its_own_cell_order(llama_lib: Path, gemma: Path) -> None:
    """Gemma 3's sliding-window layers keep their own cache, of n_swa + n_ubatch cells (256 here)
    used as a ring: past 256 positions its cells hold positions out of order. The frames equal
    those of a full-size sliding-window cache (cells in position order), the window's layers are 0
    outside their last 8 positions, the global layer is not, and every row sums to 1."""
    ids = [3 + (i * 11) % 250 for i in range(400)]
    with engine(llama_lib, gemma, n_batch=16) as ring:
        got, tokens = generate(ring, ids, 12)
    with engine(llama_lib, gemma, n_batch=16, swa_full=True) as full:
        want, _ = generate(full, ids, 12, follow=tokens)
    assert max_diff(got, want) <= 1e-6
    for frame in got:
        np.testing.assert_allclose(frame.sum(axis=-1), 1.0, atol=1e-5)
        assert not frame[:2, :, :-8].any()          # layers 0 and 1: the window
        assert frame[2, :, :-8].sum() > 0.1          # layer 2: global


def test_sliding_window_reuse_only_where_the_window_is_still_cached(llama_lib: Path, gemma: Path) -> None:
    """An extended request reuses the cache; one that diverges far back, where the sliding-window
    cache no longer holds what the window needs, is computed again (llama-server's rule): both
    equal a fresh engine's frames."""
    ids = [3 + (i * 13) % 250 for i in range(300)]
    extended = [*ids, 5, 6, 7, 8]
    diverged = [*ids[:20], 9, 10, 11, *ids[20:150]]  # the ring of 256 cells holds positions 48 on
    with engine(llama_lib, gemma, n_batch=16) as llama:
        generate(llama, ids, 4)
        got_ext, tokens_ext = generate(llama, extended, 3)
        got_div, tokens_div = generate(llama, diverged, 3)
    for seq, got, tokens in ((extended, got_ext, tokens_ext), (diverged, got_div, tokens_div)):
        with engine(llama_lib, gemma, n_batch=16) as fresh:
            want, _ = generate(fresh, seq, 3, follow=tokens)
        assert max_diff(got, want) <= 1e-6


@pytest.mark.parametrize(("writer", "reason"), [(write_tiny_mamba, "recurrent layers"),
                                                 (write_tiny_gpt_oss, "attention sinks")])
def test_what_a_frame_cannot_show_is_refused_and_still_served(llama_lib: Path, tmp_path: Path, writer: Any,
                                                               reason: str) -> None:
    """A recurrent model has no attention over the context; gpt-oss's sinks take part of each
    row's mass (found by the probe decode at load, through the hook)."""
    with engine(llama_lib, writer(tmp_path / "model.gguf"), n_ctx=256) as llama:
        info = llama.model_info()
        assert not info.attention.available
        assert reason in (info.attention.reason or "")
        assert llama.prefill([3, 4, 5], False).logits.shape == (info.vocab_size,)
        with pytest.raises(LlamaCppError, match="unavailable"):
            llama.decode(6, True)


def test_export_off_leaves_flash_attention_to_llama_cpp(llama_lib: Path, tiny: Path) -> None:
    with engine(llama_lib, tiny, attention_export="off") as llama:
        info = llama.model_info()
        assert not info.attention.available and "off" in (info.attention.reason or "")
        with pytest.raises(LlamaCppError, match="unavailable"):
            llama.prefill([3, 4, 5], True)


def test_bad_input_is_a_clear_error_and_changes_nothing(llama_lib: Path, tiny: Path, tmp_path: Path) -> None:
    with engine(llama_lib, tiny, n_ctx=64) as llama:
        llama.prefill([3, 4, 5], False)
        with pytest.raises(LlamaCppError, match="outside the vocabulary"):
            llama.decode(10**6, False)
        with pytest.raises(LlamaCppError, match="1 to 64 tokens"):
            llama.prefill([3] * 65, False)
        assert llama.n_past == 3
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(LlamaLibraryError, match="could not serve"):
        engine(llama_lib, tmp_path / "bad.gguf")


@pytest.fixture(scope="module")
def gemma3_270m() -> Iterator[Path]:
    from halo_client.testing.gemma3_270m import gemma3_270m

    yield gemma3_270m()


@pytest.mark.model
def test_gemma3_270m_serves_frames_with_its_window(llama_lib: Path, gemma3_270m: Path) -> None:
    """The real Gemma 3 270M (Q4_K_M from PyPI): 18 layers x 4 heads, every 6th layer global, the
    others a 512-position window."""
    with engine(llama_lib, gemma3_270m, n_ctx=1024) as llama:
        info = llama.model_info()
        assert (info.architecture, info.num_layers, info.num_attention_heads) == ("gemma3", 18, 4)
        assert info.attention.available, info.attention.reason
        ids = llama.tokenize("Hello! " * 300, True)
        frames, _ = generate(llama, ids, 2)
    for frame in frames:
        np.testing.assert_allclose(frame.sum(axis=-1), 1.0, atol=1e-4)
        window = frame.shape[-1] - 512
        assert not np.delete(frame, [5, 11, 17], axis=0)[:, :, :window].any()
        assert frame[[5, 11, 17], :, :window].sum() > 0
