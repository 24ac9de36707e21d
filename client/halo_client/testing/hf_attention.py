"""HF transformers' eager attention, cut into the frames a Halo Weave server streams.

Frame `i` of a generation is the attention of one query over the context (api_spec F4/F5): the
last prompt position for `i = 0`, generated token `i - 1` after that, `[layers, heads, ctx]`.
Because attention is causal, one forward pass over the prompt and the generated tokens gives
every frame: row `len(prompt) - 1 + i` of each layer's `[heads, T, T]` weights, cut at
`len(prompt) + i` columns.

A server that reuses its KV cache across requests computes something else after a context shift
(cells removed from the middle, the cells after them moved to earlier positions, as KoboldCPP's
PurgeMissingTokens and llama.cpp's `seq_rm` + `seq_add` do): the kept keys and values were
computed with the removed tokens still in the context, and only their rotary positions are
corrected. `KVCacheReplay` does the same to a transformers cache, so that such frames can be
compared with what transformers computes under the same semantics.

Test and dev-tool code: needs torch and transformers (`pip install -e '.[agreement]'`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _torch() -> Any:
    import torch

    return torch


class HFAttention:
    """A transformers causal LM in float32 with eager attention (the one that returns weights)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.model.train(False)  # eval mode: no dropout (`.eval()` is untyped)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **config_overrides: Any) -> HFAttention:
        """`config_overrides` change the config before the weights load, e.g. `sliding_window=None`
        to compute what an engine that applies no sliding window computes."""
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation="eager",
                                                        dtype=_torch().float32, **config_overrides))

    @classmethod
    def from_gguf(cls, path: str | Path, **config_overrides: Any) -> HFAttention:
        """A GGUF's weights, dequantized to float32 by transformers' GGUF loader."""
        from transformers import AutoModelForCausalLM

        path = Path(path)
        return cls(AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                        attn_implementation="eager",
                                                        dtype=_torch().float32, **config_overrides))

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def frames(self, input_ids: Sequence[int], generated: Sequence[int]) -> list[np.ndarray]:
        """The frames of a fresh generation of `generated` (at least one token) from `input_ids`."""
        n = len(input_ids)
        sequence = [*input_ids, *generated[:-1]]
        torch = _torch()
        with torch.no_grad():
            out = self.model(torch.tensor([sequence]), output_attentions=True, use_cache=False)
        rows = [a[0].numpy() for a in out.attentions]  # per layer [heads, T, T]
        return [np.stack([r[:, n - 1 + i, : n + i] for r in rows]) for i in range(len(generated))]


class KVCacheReplay:
    """A transformers KV cache driven like a llama.cpp server drives its own: feed tokens, drop a
    range of cells and shift the rest (re-rotating the cached keys, as llama.cpp's K-shift does),
    read each fed query's attention over the whole cache.

    The cache is transformers' `DynamicCache` with full layers (no sliding-window layers, which
    keep only their window), so a cache index is a position; sliding windows are still applied
    by the model's masks.
    """

    def __init__(self, hf: HFAttention) -> None:
        from transformers import DynamicCache

        self.hf = hf
        self.cache: Any = DynamicCache()
        self.tokens: list[int] = []
        module = sys.modules[type(hf.model).__module__]
        self._apply_rotary = module.apply_rotary_pos_emb
        self._rotary = hf.model.model.rotary_emb
        self._layer_types = getattr(hf.model.config, "layer_types", None)

    def feed(self, tokens: Sequence[int]) -> list[np.ndarray]:
        """Decode `tokens` after the cache; the attention `[layers, heads, ctx]` of each, over the
        cache and the tokens before it."""
        torch = _torch()
        start = len(self.tokens)
        with torch.no_grad():
            out = self.hf.model(torch.tensor([list(tokens)]), past_key_values=self.cache, use_cache=True,
                                output_attentions=True,
                                position_ids=torch.arange(start, start + len(tokens))[None])
        self.tokens.extend(tokens)
        rows = [a[0].numpy() for a in out.attentions]  # per layer [heads, n, start + n]
        return [np.stack([r[:, j, : start + j + 1] for r in rows]) for j in range(len(tokens))]

    def _cos_sin(self, delta: int, layer: int, like: Any) -> tuple[Any, Any]:
        torch = _torch()
        position = torch.tensor([[delta]])
        kwargs = {}
        if "layer_type" in inspect.signature(self._rotary.forward).parameters:
            assert self._layer_types is not None
            kwargs["layer_type"] = self._layer_types[layer]
        cos, sin = self._rotary(like, position, **kwargs)
        return cos, sin

    def drop(self, start: int, stop: int) -> None:
        """Remove cells `[start, stop)`; the cells after them move `stop - start` positions back."""
        from transformers import DynamicCache

        torch = _torch()
        shift = stop - start
        rebuilt: Any = DynamicCache()
        for layer, cached in enumerate(self.cache.layers):
            keys, values = cached.keys, cached.values  # [1, kv heads, T, head dim]
            cos, sin = self._cos_sin(-shift, layer, values)
            tail, _ = self._apply_rotary(keys[:, :, stop:], keys[:, :, stop:], cos, sin)
            rebuilt.update(torch.cat([keys[:, :, :start], tail], dim=2),
                           torch.cat([values[:, :, :start], values[:, :, stop:]], dim=2), layer)
        self.cache = rebuilt
        self.tokens = self.tokens[:start] + self.tokens[stop:]

    def truncate(self, length: int) -> None:
        """Keep the first `length` cells (a server re-decodes what follows)."""
        self.drop(length, len(self.tokens))


def reuse_plan(cached: Sequence[int], wanted: Sequence[int], *, min_match: int = 16) -> tuple[int, int, int]:
    """How a server that reuses its cache serves `wanted` when it holds `cached`: the common prefix
    `p`; then, if a run of at least `min_match` tokens of `wanted` after `p` appears later in the
    cache, the gap before it `[p, p + gap)` is dropped and the run is reused in place. Returns
    (p, gap, reused): the cache keeps `reused` cells (never all of `wanted`: its last token is
    decoded again for its logits)."""
    p = 0
    while p < min(len(cached), len(wanted)) and cached[p] == wanted[p]:
        p += 1
    gap = 0
    rest = list(wanted[p:])
    if len(rest) >= min_match:
        head = rest[:min_match]
        for g in range(1, len(cached) - p - min_match + 1):
            if list(cached[p + g : p + g + min_match]) == head:
                gap = g
                break
    reused = p
    if gap:
        after = list(cached[p + gap :])
        while reused - p < min(len(after), len(rest)) and after[reused - p] == rest[reused - p]:
            reused += 1
    return p, gap, min(reused, len(wanted) - 1)


#: ggml's CPU matmul quantizes the activations it multiplies with a quantized weight, per row, to
#: the weight type's "vec_dot" type: (block length, scale stored as F16, scale from the signed max)
_ACTIVATION_QUANT = {
    **{t: (32, True, False) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")},  # Q8_0 / Q8_1
    **{t: (256, False, True) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")},  # Q8_K
}


def _quantize_q8(x: Any, block: int, f16_scale: bool, signed_max: bool) -> Any:
    """`x` rounded as ggml's quantize_row_q8_0/q8_1 (amax / 127, F16 scale) or q8_K (-127 / the
    signed max, F32 scale) round it, blocks along the last axis."""
    torch = _torch()
    rows = x.reshape(-1, block)
    if signed_max:
        peak = torch.gather(rows, 1, rows.abs().argmax(dim=1, keepdim=True))
        iscale = torch.where(peak != 0, -127.0 / peak, torch.zeros_like(peak))
        q = torch.clamp(torch.round(iscale * rows), max=127)
        scale = torch.where(peak != 0, 1.0 / iscale, torch.zeros_like(peak))
    else:
        amax = rows.abs().amax(dim=1, keepdim=True)
        q = torch.round(rows * torch.where(amax != 0, 127.0 / amax, torch.zeros_like(amax)))
        scale = amax / 127.0
        if f16_scale:
            scale = scale.half().float()
    return (q * scale).reshape(x.shape)


def imitate_quantized_matmuls(hf: HFAttention, gguf_path: str | Path) -> int:
    """Make `hf` (loaded from `gguf_path`) round each linear layer's input as ggml's CPU matmul does
    for that layer's weight type (8-bit blocks for quantized weights, F16 for F16 weights); the
    number of layers changed. transformers' own matmuls use the float32 inputs."""
    import gguf
    import torch

    reader = gguf.GGUFReader(str(gguf_path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    arch = reader.fields["general.architecture"].contents()
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(model_arch, int(hf.model.config.num_hidden_layers))
    changed = 0
    for name, module in hf.model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        mapped = names.get_name(name)
        kind = types.get(f"{mapped}.weight") if mapped else None
        if kind in _ACTIVATION_QUANT:
            block, f16_scale, signed_max = _ACTIVATION_QUANT[kind]
            module.register_forward_pre_hook(
                lambda _m, args, b=block, f=f16_scale, s=signed_max: (_quantize_q8(args[0], b, f, s),))
        elif kind == "F16":
            module.register_forward_pre_hook(lambda _m, args: (args[0].half().float(),))
        else:
            continue
        changed += 1
    return changed
