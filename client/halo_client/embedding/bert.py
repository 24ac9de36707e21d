"""A BERT encoder in numpy, for sentence embeddings: a forward pass, mean pooling, unit length.

What sentence-transformers computes for a `Transformer` + mean `Pooling` + `Normalize` model
(all-MiniLM-L6-v2 is one), without PyTorch: the weights are read from the model's safetensors
file (a JSON header, then the raw little-endian arrays: memory-mapped, not copied), and the
forward pass is a few matrix products per layer. tests/embedding checks it against
transformers' own BertModel on the same file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from halo_client.errors import HaloError

F32 = npt.NDArray[np.float32]
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class EmbeddingModelError(HaloError):
    """A sentence-embedding model file that cannot be read or run."""


def read_safetensors(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every tensor of a safetensors file, memory-mapped."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
        tensors: dict[str, npt.NDArray[np.generic]] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            dtype = _DTYPES[entry["dtype"]]
            tensors[name] = data[start:end].view(dtype).reshape(entry["shape"])
        return tensors
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise EmbeddingModelError(f"{path} is not a readable safetensors file: {exc}") from exc


#: the encoders here: BERT, and MPNet (a BERT with attention biased by distance, `embedding.mpnet`)
MODEL_TYPES = ("bert", "mpnet")


@dataclass(frozen=True)
class BertConfig:
    layers: int
    heads: int
    hidden: int
    eps: float
    model_type: str = "bert"

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            data = json.loads(path.read_text())
            if data.get("model_type") not in MODEL_TYPES or data.get("hidden_act") != "gelu":
                raise ValueError(f"not a {' or '.join(MODEL_TYPES)} with gelu")
            return cls(int(data["num_hidden_layers"]), int(data["num_attention_heads"]), int(data["hidden_size"]),
                       float(data["layer_norm_eps"]), str(data["model_type"]))
        except (OSError, ValueError, KeyError) as exc:
            raise EmbeddingModelError(f"{path} is not a configuration these encoders run: {exc}") from exc


def gelu(x: F32) -> F32:
    """BERT's exact gelu, `x * (1 + erf(x / sqrt 2)) / 2`, with erf to about 1e-7 (Abramowitz &
    Stegun 7.1.26: numpy has none). Worked in place: the feed-forward layer's activations are the
    largest array of a forward pass, and a fresh temporary for each step of the polynomial would
    make this a quarter of an embedding's time."""
    z = np.multiply(x, np.float32(1.0 / np.sqrt(2.0)))
    a = np.abs(z)
    t = np.multiply(a, np.float32(0.3275911))
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly: F32 = np.multiply(t, np.float32(1.061405429))
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - |erf(z)|
    np.subtract(np.float32(1.0), poly, out=poly)
    np.copysign(poly, z, out=poly)  # erf(z)
    poly += np.float32(1.0)
    poly *= x
    poly *= np.float32(0.5)
    return poly


def layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: F32 = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


class BertEncoder:
    """`encode(ids, mask)`: unit-length mean-pooled sentence vectors `[batch, hidden]`."""

    def __init__(self, weights: Path, config: BertConfig) -> None:
        tensors = read_safetensors(weights)
        self.config = config

        def get(name: str) -> F32:
            try:
                return np.asarray(tensors[name], np.float32)
            except KeyError as exc:
                raise EmbeddingModelError(f"{weights} has no tensor {name}") from exc

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.embed_norm = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.layers = [self._layer(get, f"encoder.layer.{i}.") for i in range(config.layers)]
        self._load_more(get)

    def _load_more(self, get: Callable[[str], F32]) -> None:
        self.token_type = get("embeddings.token_type_embeddings.weight")[0]

    def _layer(self, get: Callable[[str], F32], p: str) -> tuple[F32, ...]:
        # one product for Q, K and V: their weights side by side, transposed once here
        names = [p + f"attention.self.{n}" for n in ("query", "key", "value")]
        return self._dense_layer(get, names, p + "attention.output.dense", p + "attention.output.LayerNorm", p)

    @staticmethod
    def _dense_layer(get: Callable[[str], F32], qkv: list[str], out: str, norm: str, p: str) -> tuple[F32, ...]:
        return (np.ascontiguousarray(np.concatenate([get(n + ".weight") for n in qkv]).T),
                np.concatenate([get(n + ".bias") for n in qkv]),
                np.ascontiguousarray(get(out + ".weight").T), get(out + ".bias"),
                get(norm + ".weight"), get(norm + ".bias"),
                np.ascontiguousarray(get(p + "intermediate.dense.weight").T), get(p + "intermediate.dense.bias"),
                np.ascontiguousarray(get(p + "output.dense.weight").T), get(p + "output.dense.bias"),
                get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias"))

    @property
    def max_tokens(self) -> int:
        return int(self.position.shape[0])

    def _embedded(self, ids: npt.NDArray[np.int64]) -> F32:
        out: F32 = self.word[ids] + self.position[: ids.shape[1]] + self.token_type
        return out

    def _position_bias(self, length: int) -> F32 | None:
        """What each head adds to its attention scores by the tokens' distance (`[heads, q, k]`)."""
        return None

    def encode(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_],
               layers: Callable[[F32, F32], F32] | None = None) -> F32:
        """`ids`, `mask`: `[batch, tokens]` (padding masked out) -> `[batch, hidden]`, unit length.
        `layers` runs the transformer layers instead of numpy (`onnx_layers.OnnxLayers`)."""
        c = self.config
        batch, length = ids.shape
        x = layer_norm(self._embedded(ids).reshape(batch, length, c.hidden), *self.embed_norm, c.eps)
        # padding columns get -inf before the softmax (a large negative, as transformers does)
        bias = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        by_distance = self._position_bias(length)
        if by_distance is not None:
            bias = bias + by_distance[None]
        return mean_pooled((layers or self.run_layers)(x, bias), mask)

    def run_layers(self, x: F32, bias: F32) -> F32:
        """`x` `[batch, tokens, hidden]` through every layer; `bias` is added to each head's
        attention scores (it broadcasts to `[batch, heads, tokens, tokens]`)."""
        if not self.layers:
            raise EmbeddingModelError("this encoder's layers were handed to ONNX Runtime (int8): embed through "
                                      "its SentenceEmbedder")
        c = self.config
        batch, length, _ = x.shape
        head_dim = c.hidden // c.heads
        # every token of the batch as one row: the dense layers are one matrix product each
        x = x.reshape(batch * length, c.hidden)
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for qkv, qkv_b, wo, bo, n1w, n1b, w1, b1, w2, b2, n2w, n2b in self.layers:
            projected = (x @ qkv + qkv_b).reshape(batch, length, 3, c.heads, head_dim)
            q, k, v = (projected[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
            scores = q @ k.transpose(0, 1, 3, 2) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch * length, c.hidden)
            x = layer_norm(x + context @ wo + bo, n1w, n1b, c.eps)
            x = layer_norm(x + gelu(x @ w1 + b1) @ w2 + b2, n2w, n2b, c.eps)
        out: F32 = x.reshape(batch, length, c.hidden)
        return out


def mean_pooled(hidden: F32, mask: npt.NDArray[np.bool_]) -> F32:
    """`[batch, tokens, hidden]` -> the mean over each row's tokens in `mask`, made unit length."""
    weight = mask[..., None].astype(np.float32)
    pooled = (hidden * weight).sum(axis=1) / np.maximum(weight.sum(axis=1), 1.0)
    out: F32 = (pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return out
