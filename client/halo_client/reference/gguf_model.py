"""Reading a llama-family GGUF: hyperparameters, dequantized weights, tokenizer data, template.

Weights are dequantized once at load (with the `gguf` package's own dequantizers) into float32
arrays shaped `[out_features, in_features]`. GGUF stores llama's Q and K projections with the
rows permuted for llama.cpp's RoPE (rotating adjacent pairs); the forward pass uses that same
rotation, so no permutation is undone here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from halo_client.errors import HaloError

SUPPORTED_ARCHITECTURES = ("llama",)


class ModelFileError(HaloError):
    """A model file that cannot be run by the reference backend."""


@dataclass(frozen=True)
class LlamaParams:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rope_freq_base: float
    rope_freq_scale: float
    rope_dim: int
    rms_eps: float
    head_dim: int


@dataclass
class TokenizerData:
    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    scores: list[float]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


@dataclass
class GGUFModel:
    params: LlamaParams
    weights: dict[str, npt.NDArray[np.float32]]
    tokenizer: TokenizerData
    chat_template: str | None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def load_gguf(path: str | Path, progress: Callable[[str], None] | None = None) -> GGUFModel:
    """A llama-family GGUF: its hyperparameters, weights (dequantized to float32) and tokenizer;
    `ModelFileError` saying why for anything the reference backend cannot run."""
    from gguf import GGUFReader  # imported here: only the reference backend needs it

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    try:
        reader = GGUFReader(path)
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable GGUF file: {exc}") from exc
    tokens = list(_field(reader, "tokenizer.ggml.tokens", []))
    params = _hyperparameters(reader, path, len(tokens))
    if not tokens:
        raise ModelFileError(f"{path.name} has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    weights = _weights(reader, path, params, progress)
    vocab_rows = weights.get("output.weight", weights["token_embd.weight"]).shape[0]
    if vocab_rows != len(tokens):
        raise ModelFileError(f"{path.name}: the output layer has {vocab_rows} rows but the vocabulary "
                             f"{len(tokens)} tokens")
    template = _field(reader, "tokenizer.chat_template")
    return GGUFModel(params, weights, _tokenizer(reader, tokens), str(template) if template else None)


def _hyperparameters(reader: Any, path: Path, n_tokens: int) -> LlamaParams:
    arch = _field(reader, "general.architecture", "?")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(
            f"{path.name} is a {arch!r} model; the reference backend runs {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(llama-family: Llama, SmolLM, TinyLlama-style GGUFs). Use KoboldCPP for other architectures."
        )
    try:
        n_embd = int(_field(reader, f"{arch}.embedding_length"))
        n_head = int(_field(reader, f"{arch}.attention.head_count"))
        n_layer = int(_field(reader, f"{arch}.block_count"))
        n_ff = int(_field(reader, f"{arch}.feed_forward_length"))
    except TypeError as exc:  # int(None): a hyperparameter is missing
        raise ModelFileError(f"{path.name} lacks llama hyperparameters ({exc})") from exc
    head_dim = int(_field(reader, f"{arch}.attention.key_length", n_embd // n_head))
    if int(_field(reader, f"{arch}.attention.value_length", head_dim)) != head_dim:
        raise ModelFileError(f"{path.name}: key and value head sizes differ, which the reference backend does not run")
    scaling = str(_field(reader, f"{arch}.rope.scaling.type", "none"))
    scale_linear = _field(reader, f"{arch}.rope.scaling.factor") or _field(reader, f"{arch}.rope.scale_linear")
    if scaling not in ("none", "linear"):
        raise ModelFileError(
            f"{path.name} uses {scaling!r} RoPE scaling; the reference backend runs plain and linear RoPE "
            "(and Llama 3's rope_freqs factors) only")
    if scaling == "none" and _field(reader, f"{arch}.rope.scaling.type") is not None:
        scale_linear = None
    params = LlamaParams(
        name=str(_field(reader, "general.name", path.stem)),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        n_ff=n_ff,
        n_vocab=int(_field(reader, f"{arch}.vocab_size", n_tokens)),
        n_ctx_train=int(_field(reader, f"{arch}.context_length", 2048)),
        rope_freq_base=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_freq_scale=1.0 / float(scale_linear) if scale_linear else 1.0,
        rope_dim=int(_field(reader, f"{arch}.rope.dimension_count", head_dim)),
        rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        head_dim=head_dim,
    )
    if n_head % params.n_head_kv or params.rope_dim > head_dim or params.rope_dim % 2:
        raise ModelFileError(f"{path.name}: inconsistent attention shape ({n_head} heads, {params.n_head_kv} KV heads, "
                             f"head size {head_dim}, RoPE over {params.rope_dim} dimensions)")
    return params


def _weights(reader: Any, path: Path, params: LlamaParams,
             progress: Callable[[str], None] | None) -> dict[str, npt.NDArray[np.float32]]:
    from gguf.quants import dequantize

    weights: dict[str, npt.NDArray[np.float32]] = {}
    for i, tensor in enumerate(reader.tensors):
        array = dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        weights[tensor.name] = np.ascontiguousarray(array.reshape(shape), dtype=np.float32)
        if progress is not None and (i % 20 == 0 or i + 1 == len(reader.tensors)):
            progress(f"loading {path.name}: {i + 1}/{len(reader.tensors)} tensors")
    missing = [name for name in _required_tensors(params.n_layer) if name not in weights]
    if missing:
        raise ModelFileError(f"{path.name} lacks {len(missing)} llama tensors ({', '.join(missing[:3])}, ...): "
                             "not a llama-family model file")
    return weights


def _tokenizer(reader: Any, tokens: list[str]) -> TokenizerData:
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eot = end_of_turn_id(_field(reader, "tokenizer.ggml.eot_token_id"), tokens)
    model_kind = str(_field(reader, "tokenizer.ggml.model", "gpt2"))
    return TokenizerData(
        model=model_kind,
        pre=str(_field(reader, "tokenizer.ggml.pre", "default")),
        tokens=tokens,
        token_types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))],
        merges=list(_field(reader, "tokenizer.ggml.merges", [])),
        scores=[float(x) for x in _field(reader, "tokenizer.ggml.scores", [0.0] * len(tokens))],
        bos_id=_maybe_int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_id=_maybe_int(eos),
        eot_id=_maybe_int(eot),
        unk_id=_maybe_int(_field(reader, "tokenizer.ggml.unknown_token_id")),
        # llama.cpp's defaults when the file does not say: SentencePiece models add BOS and a space prefix
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", model_kind == "llama")),
        add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", model_kind == "llama")),
    )


def _required_tensors(n_layer: int) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_layer):
        names += [f"blk.{i}.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    return names


#: llama.cpp's end-of-turn texts (src/llama.cpp, llm_load_vocab), in its order
END_OF_TURN_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>")


def end_of_turn_id(key: Any, tokens: list[str]) -> Any:
    """The GGUF's tokenizer.ggml.eot_token_id, else the first of llama.cpp's end-of-turn texts, in
    its list's order, that the vocabulary holds (the KoboldCPP patch uses the same rule). llama.cpp
    itself scans its vocabulary hash map, so of two such tokens (SmolLM2: <|endoftext|> and
    <|im_end|>) it may take either."""
    if key is not None:
        return key
    return next((tokens.index(t) for t in END_OF_TURN_TEXTS if t in tokens), None)


def _maybe_int(value: Any) -> int | None:
    return None if value is None else int(value)
