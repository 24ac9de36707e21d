"""Tiny random-weight models of several architectures, in HF transformers and as F32 GGUF.

Each model is made the way a real one reaches a llama.cpp user: a transformers model
(`save_pretrained`: `config.json`, `model.safetensors`, a tokenizer) converted by llama.cpp's own
`convert_hf_to_gguf.py`, of the llama.cpp that will run it (KoboldCPP v1.76's for v1.76, the
current one's for the current engine), with `--outtype f32`. So the GGUF's weights are the HF
model's, permuted, renamed and offset by the converter exactly as for a downloaded model, and the
attention the two compute can be compared number for number.

Only the vocabulary is not the converter's business: the tiny models share a 276-token byte-level
BPE vocabulary (`tiny_model.py`'s, and Llama 2's `<unk>`, `<s>`, `</s>`, without which KoboldCPP
v1.76 fails to load a model named Phi-3), and the converter identifies a BPE pre-tokenizer by hashing
what a *known* model's tokenizer makes of a test text, which a made-up vocabulary cannot match;
`gguf_convert` tells it "default" instead (what `tiny_model.py` writes too). The ids sent to a
server never pass through a tokenizer anyway.

The weights are random (seeded) but not transformers' small initialisation: Q and K are scaled up
so that attention rows are peaked (a wrong column, position or layer moves values by ~0.1-1),
and sliding windows (32) are shorter than the test prompts so that they matter.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_client.reference.tiny_model import MERGES, SPECIALS
from halo_client.reference.tokenizer import _byte_decoder

#: bump when the models change (the cache key includes it)
WRITER_VERSION = 3
#: a window shorter than the prompts the fidelity tests send, so that it matters
SLIDING_WINDOW = 32
_COMMON: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 2048, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": None,
}


@dataclass(frozen=True)
class Architecture:
    """One architecture's tiny model: its transformers config and what llama.cpp calls it."""

    name: str
    #: transformers' model_type
    model_type: str
    #: general.architecture of the GGUF
    gguf_arch: str
    config: dict[str, Any]
    #: whether KoboldCPP v1.76's llama.cpp (and converter) knows the architecture
    in_v176: bool
    #: Gemma's RMSNorm multiplies by (1 + weight): its weights are stored around 0, not 1
    norm_around_zero: bool = False
    notes: tuple[str, ...] = field(default=())


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama", "llama", "llama", {**_COMMON, "num_hidden_layers": 2}, in_v176=True),
    Architecture("mistral", "mistral", "llama", {**_COMMON, "num_hidden_layers": 2, "sliding_window": SLIDING_WINDOW},
                 in_v176=True),
    Architecture("qwen2", "qwen2", "qwen2", {**_COMMON, "num_hidden_layers": 2, "rope_theta": 1_000_000.0,
                                             "use_sliding_window": False}, in_v176=True),
    Architecture("qwen3", "qwen3", "qwen3", {**_COMMON, "num_hidden_layers": 2, "head_dim": 16,
                                             "rope_theta": 1_000_000.0}, in_v176=False),
    # 26 layers: v1.76 runs Gemma 2 only with the layer counts of the 2B, 9B and 27B models (it picks
    # the query scale by size and aborts on any other); 1/sqrt(head_dim) is the 2B's and 9B's scale.
    # A soft-cap of 5 (Gemma 2's is 50) so that it bites on these logits.
    Architecture("gemma2", "gemma2", "gemma2", {
        **_COMMON, "num_hidden_layers": 26, "head_dim": 16, "query_pre_attn_scalar": 16,
        "sliding_window": SLIDING_WINDOW, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True}, in_v176=True, norm_around_zero=True),
    # 6 layers: llama.cpp hard-codes Gemma 3's pattern (5 sliding-window layers, then a global one),
    # and so does transformers' default
    Architecture("gemma3", "gemma3_text", "gemma3", {
        **_COMMON, "num_hidden_layers": 6, "head_dim": 16, "query_pre_attn_scalar": 16,
        "sliding_window": SLIDING_WINDOW, "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}}},
                 in_v176=False, norm_around_zero=True),
    Architecture("phi3", "phi3", "phi3", {
        **_COMMON, "num_hidden_layers": 2, "sliding_window": SLIDING_WINDOW,
        "original_max_position_embeddings": 2048}, in_v176=True),
)}


#: v1.76's llama.cpp sets attributes of these tokens in every model named Phi-3 (whose vocabulary is
#: Llama 2's) and fails to load one without them
EXTRA_SPECIALS = ("<unk>", "<s>", "</s>")


def vocabulary() -> list[str]:
    """The tiny models' tokens: 3 specials, GPT-2's 256 byte symbols, 14 merges (`tiny_model.py`'s),
    `EXTRA_SPECIALS`."""
    decoder = _byte_decoder()
    return [*SPECIALS, *sorted(decoder, key=lambda ch: decoder[ch]), *("".join(m.split(" ")) for m in MERGES),
            *EXTRA_SPECIALS]


def special_ids() -> tuple[int, ...]:
    """The special tokens' ids (a fidelity test bans them, so that every request yields all its frames)."""
    n = len(vocabulary())
    return (*range(len(SPECIALS)), *range(n - len(EXTRA_SPECIALS), n))


def _save_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = vocabulary()
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[(a, b) for a, b in (m.split(" ") for m in MERGES)]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    fast: Any = PreTrainedTokenizerFast
    fast(tokenizer_object=bpe, bos_token=SPECIALS[0], eos_token=SPECIALS[2]).save_pretrained(directory)


def _randomize(model: Any, arch: Architecture, seed: int) -> None:
    """Seeded weights that make peaked attention: every matrix ~ N(0, gain^2 / fan_in), with gain
    1.5 for the query and key projections (logits with a standard deviation of ~2), norms around
    their neutral value but the query and key norms (Qwen 3, Gemma 3) around 2 (they normalize each
    head's query and key, which would leave logits of ~1), biases ~ N(0, 0.2^2)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim == 1 and "norm" in name:
                neutral = 2.0 if any(p in name for p in ("q_norm", "k_norm")) else 1.0
                value = noise * 0.1 + neutral - (1.0 if arch.norm_around_zero else 0.0)
            elif param.ndim == 1:
                value = noise * 0.2
            elif "embed_tokens" in name or "lm_head" in name:
                value = noise
            else:
                gain = 1.5 if any(p in name for p in ("q_proj", "k_proj", "qkv_proj")) else 1.0
                value = noise * (gain / param.shape[1] ** 0.5)
            param.copy_(value)


def write_hf_model(arch: Architecture, directory: Path, *, seed: int) -> Path:
    """The transformers model (random weights, float32) and its tokenizer in `directory`.

    `config.json` also carries the top-level keys older converters read (`rope_theta`), which
    transformers 5 keeps inside `rope_parameters`; transformers reads them back the same."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    _save_tokenizer(directory)
    config = AutoConfig.for_model(arch.model_type, vocab_size=len(vocabulary()), **arch.config)
    auto: Any = AutoModelForCausalLM
    model = auto.from_config(config, attn_implementation="eager", dtype=torch.float32)
    _randomize(model, arch, seed)
    model.save_pretrained(directory)
    path = directory / "config.json"
    saved = json.loads(path.read_text())
    rope = saved.get("rope_parameters") or {}
    theta = rope.get("full_attention", rope).get("rope_theta")
    if theta is not None:
        saved.setdefault("rope_theta", theta)
    if "sliding_attention" in rope:
        saved.setdefault("rope_local_base_freq", rope["sliding_attention"]["rope_theta"])
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return directory


@dataclass(frozen=True)
class TinyModel:
    arch: Architecture
    #: the transformers model (`from_pretrained(hf_dir)`)
    hf_dir: Path
    #: the F32 GGUF the converter of `converter_tree` made of it
    gguf: Path


class ConversionError(RuntimeError):
    """llama.cpp's converter failed on a tiny model."""


def _tree_identity(tree: Path) -> str:
    script = tree / "convert_hf_to_gguf.py"
    return hashlib.sha256(script.read_bytes()).hexdigest()[:16] if script.is_file() else "missing"


def convert(tree: Path, pairs: Sequence[tuple[Path, Path]]) -> None:
    """Run the converter of the llama.cpp source `tree` (its `convert_hf_to_gguf.py` and `gguf-py`)
    on each (HF directory, GGUF path), in one process with that tree's `gguf` package."""
    if not (tree / "convert_hf_to_gguf.py").is_file() or not (tree / "gguf-py").is_dir():
        raise ConversionError(f"{tree} has no convert_hf_to_gguf.py and gguf-py: not a llama.cpp source tree")
    args = [str(tree)] + [str(p) for pair in pairs for p in pair]
    result = subprocess.run([sys.executable, "-m", "halo_client.testing.gguf_convert", *args],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConversionError(f"convert_hf_to_gguf.py of {tree} failed:\n{result.stderr[-3000:]}")


def tiny_models(names: Sequence[str], tree: Path, cache: Path, *, seed: int = 0) -> dict[str, TinyModel]:
    """The named architectures' tiny models converted by `tree`'s converter, made once and cached
    in `cache` (keyed by the writer's version, the seed, the architecture and the converter)."""
    models: dict[str, TinyModel] = {}
    todo: list[tuple[Path, Path]] = []
    for name in names:
        arch = ARCHITECTURES[name]
        spec = json.dumps([WRITER_VERSION, seed, arch.name, arch.model_type, arch.config], sort_keys=True)
        key = hashlib.sha256(spec.encode()).hexdigest()[:12]
        hf_dir = cache / f"{name}-{key}"
        gguf = cache / f"{name}-{key}-{_tree_identity(tree)}.f32.gguf"
        if not (hf_dir / "model.safetensors").is_file():
            # each architecture its own weights (Mistral's would otherwise be Llama's)
            write_hf_model(arch, hf_dir, seed=seed + list(ARCHITECTURES).index(name))
        if not gguf.is_file():
            todo.append((hf_dir, gguf))
        models[name] = TinyModel(arch, hf_dir, gguf)
    if todo:
        partial = [(hf, gguf.with_suffix(".partial")) for hf, gguf in todo]
        convert(tree, partial)
        for (_, tmp), (_, final) in zip(partial, todo, strict=True):
            tmp.replace(final)
    return models
