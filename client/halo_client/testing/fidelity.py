"""Fidelity of an engine's frames to HF transformers' eager attention, on a tiny model.

The same four requests go to every engine, one after the other on one server (so that a server
that keeps its KV cache between requests reuses it as it would in a chat):

1. `fresh`: a 400-token prompt, 6 greedy tokens with frames. Frame 0 is the prefill's last row,
   frames 1-5 are single-token decodes.
2. `shift`: the same prompt with tokens 100-139 removed and 8 new tokens appended (what the
   pruner sends after dropping a sentence), 4 tokens. A server that reuses its cache either
   recomputes from the first difference, or removes the 40 cells and shifts the 260 after them
   (KoboldCPP's PurgeMissingTokens, llama.cpp's `seq_rm` + `seq_add`).
3. `shift_no_attention`: request 2's context with tokens 20-59 removed and 8 new ones, without
   frames: KoboldCPP shifts its cache for such a request (it never does for one with frames).
4. `after_shift`: request 3's context, its generated tokens and 6 new ones, 4 tokens with frames:
   what follows a context shift made by another request.

Each frame is compared with what transformers computes for the same tokens: a fresh forward pass
(`HFAttention.frames`) for an engine that recomputes, the same cache operations replayed on a
transformers cache (`KVCacheReplay`) for one that reuses shifted cells. Where llama.cpp computes
other attention than transformers' implementation of the model (`DIFFERENCES`), transformers is
run with llama.cpp's semantics, and the frames are also compared with transformers as configured,
to show that the difference is real. And each architecture's distinctive features (a sliding window,
a soft-cap) are switched off in transformers once, to show that the frames depend on them: a
control that the frames must *not* match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from halo_client.messages import ModelInfo
from halo_client.testing.engines import Semantics
from halo_client.testing.hf_attention import HFAttention, KVCacheReplay, reuse_plan
from halo_client.testing.tiny_models import special_ids

#: the tolerance of issue 20: |frame - transformers| at every layer, head and column
MAX_ABS = 2e-3
PROMPT_TOKENS = 400
CONTEXT = 1024


@dataclass(frozen=True)
class Difference:
    """Where llama.cpp computes other attention than transformers' model, and how to make
    transformers compute what llama.cpp does."""

    #: a few words for a table
    label: str
    overrides: dict[str, Any]
    why: str


_MISTRAL_SWA = Difference(
    "no sliding window", {"sliding_window": None},
    "llama.cpp runs Mistral as `llama`, which has no sliding window: every layer attends to the whole "
    "context (transformers' Mistral masks keys more than `sliding_window` positions back)")
#: (llama.cpp generation, architecture) -> the difference
DIFFERENCES: dict[tuple[Semantics, str], Difference] = {
    ("v1.76", "mistral"): _MISTRAL_SWA,
    ("current", "mistral"): _MISTRAL_SWA,
    ("current", "phi3"): Difference(
        "no sliding window", {"sliding_window": None},
        "current llama.cpp turns Phi-3's sliding window off at load (llama_model_phi3::load_arch_hparams: "
        "\"Phi SWA is currently disabled\", llama.cpp PR 13676); KoboldCPP v1.76's llama.cpp applies it"),
}


def _f16_gelu(hf: HFAttention) -> None:
    import torch

    class F16Gelu(torch.nn.Module):
        def __init__(self, gelu: Any) -> None:
            super().__init__()
            self.gelu = gelu

        def forward(self, x: Any) -> Any:
            return self.gelu(x.half().float()).half().float()

    for layer in hf.model.model.layers:
        layer.mlp.act_fn = F16Gelu(layer.mlp.act_fn)


@dataclass(frozen=True)
class Numerics:
    """A way llama.cpp's CPU arithmetic differs from transformers' float32 (well inside the
    tolerance, but the largest part of what is left), and transformers made to do the same."""

    label: str
    apply: Callable[[HFAttention], None]
    why: str


#: architecture -> the numerics that explain most of its residual
NUMERICS: dict[str, Numerics] = {name: Numerics(
    "F16 GELU", _f16_gelu,
    "ggml's CPU GELU looks its result up in a table indexed by the input rounded to F16 (GGML_GELU_FP16, "
    "in v1.76 and today); Gemma's feed-forward uses GELU, so every layer's input carries that rounding "
    "into the next layer's attention") for name in ("gemma2", "gemma3")}


#: a window longer than any test context: transformers without a sliding window, whatever the model
NO_WINDOW = 1 << 20
#: a control (transformers with a feature switched off) must miss the frames by more than this
CONTROL_MIN_ABS = 10 * MAX_ABS


def controls(arch: str, config: dict[str, Any], difference: Difference | None) -> dict[str, dict[str, Any]]:
    """Transformers configurations the frames must not match: llama.cpp's semantics undone (where
    llama.cpp differs from transformers), or one feature switched off."""
    if difference is not None:
        return {"transformers as configured": {}}
    out: dict[str, dict[str, Any]] = {}
    if config.get("sliding_window"):
        out["no sliding window"] = {"sliding_window": NO_WINDOW}
    if config.get("attn_logit_softcapping"):
        out["no soft-cap"] = {"attn_logit_softcapping": None}
    if not out:  # nothing distinctive: positions, then (a tenth of the RoPE base)
        base = float(config.get("rope_theta", 10_000.0))
        out["RoPE base / 10"] = {"rope_parameters": {"rope_type": "default", "rope_theta": base / 10}}
    return out


@dataclass
class Agreement:
    """|got - want| statistics over frames, per layer."""

    max_abs: np.ndarray  # [layers]
    tv_sum: np.ndarray  # [layers] sum over rows of the total-variation distance
    top1: np.ndarray  # [layers] rows whose argmax agrees
    rows: np.ndarray  # [layers]

    @classmethod
    def empty(cls, layers: int) -> Agreement:
        return cls(np.zeros(layers), np.zeros(layers), np.zeros(layers), np.zeros(layers))

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        if got.shape != want.shape:
            raise AssertionError(f"frame shape {got.shape}, transformers {want.shape}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        self.max_abs = np.maximum(self.max_abs, diff.max(axis=(1, 2)))
        self.tv_sum += 0.5 * diff.sum(axis=2).sum(axis=1)
        self.top1 += (got.argmax(axis=2) == want.argmax(axis=2)).sum(axis=1)
        self.rows += got.shape[1]

    @property
    def worst(self) -> float:
        return float(self.max_abs.max())

    @property
    def mean_tv(self) -> np.ndarray:
        return np.asarray(self.tv_sum / np.maximum(self.rows, 1))

    @property
    def top1_share(self) -> np.ndarray:
        return np.asarray(self.top1 / np.maximum(self.rows, 1))


def agreement(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> Agreement:
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} frames, transformers {len(want)}")
    result = Agreement.empty(want[0].shape[0])
    for g, w in zip(got, want, strict=True):
        result.add(g, w)
    return result


@dataclass
class Request:
    name: str
    input_ids: list[int]
    max_length: int
    attention: bool
    generated: list[int] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)


def _ordinary(vocab_size: int) -> np.ndarray:
    return np.setdiff1d(np.arange(vocab_size), special_ids())


def requests(vocab_size: int, seed: int = 20) -> list[Request]:
    """The four requests' contexts (the later ones grow from what the earlier ones generate)."""
    rng = np.random.default_rng(seed)
    ordinary = _ordinary(vocab_size)

    def ids(n: int) -> list[int]:
        return [int(i) for i in rng.choice(ordinary, n)]

    prompt = ids(PROMPT_TOKENS)
    return [Request("fresh", prompt, 6, True),
            Request("shift", prompt[:100] + prompt[140:] + ids(8), 4, True),
            Request("shift_no_attention", [], 4, False),  # from request 2's context, once it is known
            Request("after_shift", [], 4, True)]  # from request 3's


async def _stream(client: KoboldClient, request: Request) -> None:
    async with client.generate_stream(request.input_ids, max_length=request.max_length, temperature=0,
                                      rep_pen=1.0, banned_token_ids=list(special_ids()),
                                      return_attention=request.attention) as stream:
        async for event in stream:
            if isinstance(event, DoneEvent):
                break
            assert isinstance(event, TokenEvent)
            request.generated.append(event.token_id)
            if request.attention:
                assert event.attention is not None
                request.frames.append(np.array(event.attention.values, dtype=np.float32))
    if len(request.generated) != request.max_length:
        raise AssertionError(f"{request.name}: {len(request.generated)} tokens, asked for {request.max_length}")


async def run_requests(url: str, vocab_size: int, seed: int = 20) -> tuple[ModelInfo, list[Request]]:
    """The server's model info, and the four requests sent to it with their tokens and frames."""
    todo = requests(vocab_size, seed)
    rng = np.random.default_rng(seed + 1)
    ordinary = _ordinary(vocab_size)

    def ids(n: int) -> list[int]:
        return [int(i) for i in rng.choice(ordinary, n)]

    async with KoboldClient(url, timeout=600) as client:
        info = await client.model_info()
        for i, request in enumerate(todo):
            before = todo[i - 1]
            if request.name == "shift_no_attention":
                request.input_ids = before.input_ids[:20] + before.input_ids[60:] + ids(8)
            elif request.name == "after_shift":
                request.input_ids = before.input_ids + before.generated + ids(6)
            await _stream(client, request)
    return info, todo


def fresh_frames(hf: HFAttention, request: Request) -> list[np.ndarray]:
    return hf.frames(request.input_ids, request.generated)


def replayed_frames(hf: HFAttention, done: Sequence[Request]) -> dict[str, list[np.ndarray]]:
    """What a server that reuses (and shifts) its KV cache computes for each request with frames."""
    replay = KVCacheReplay(hf)
    out: dict[str, list[np.ndarray]] = {}
    for request in done:
        start, gap, reused = reuse_plan(replay.tokens, request.input_ids)
        if gap:
            replay.drop(start, start + gap)
        replay.truncate(reused)
        frames = [replay.feed(request.input_ids[reused:])[-1]]
        frames += [replay.feed([t])[0] for t in request.generated[:-1]]
        if request.attention:
            out[request.name] = frames
    return out


@dataclass
class Result:
    """One engine on one architecture."""

    arch: str
    engine: str
    #: scenario -> agreement with transformers under llama.cpp's semantics ("prefill" and "decode"
    #: split the fresh request: its frame 0 and frames 1-5)
    scenarios: dict[str, Agreement]
    #: which transformers computation the shifted requests matched: "recompute" or "shift"
    after_shift: str
    difference: Difference | None = None
    #: the fresh request against each control (see `controls`)
    controls: dict[str, Agreement] = field(default_factory=dict)
    #: the fresh request against transformers imitating llama.cpp's numerics (see `NUMERICS`)
    numerics: Agreement | None = None
    #: how far the shifted requests' frames are from the other computation (None: no such requests);
    #: small where a sliding window hides the dropped tokens from every layer
    other_after_shift: float | None = None

    @property
    def worst(self) -> float:
        return max(a.worst for a in self.scenarios.values())


def judge(arch: str, config: dict[str, Any], engine: str, semantics: Semantics, after_shift: str | None,
          hf_dir: Any, done: Sequence[Request]) -> Result:
    """Compare the requests' frames with transformers (the model in `hf_dir`, made from `config`)."""
    difference = DIFFERENCES.get((semantics, arch))
    hf = HFAttention.from_pretrained(hf_dir, **(difference.overrides if difference else {}))
    by_name = {r.name: r for r in done}
    fresh = by_name["fresh"]
    want = fresh_frames(hf, fresh)
    scenarios = {"prefill": agreement(fresh.frames[:1], want[:1]),
                 "decode": agreement(fresh.frames[1:], want[1:])}
    shifted = [r for r in done if r.attention and r.name != "fresh"]
    chosen, other = "recompute", None
    if shifted:
        recomputed = {r.name: agreement(r.frames, fresh_frames(hf, r)) for r in shifted}
        replay = replayed_frames(hf, done)
        reused = {r.name: agreement(r.frames, replay[r.name]) for r in shifted}
        worst_recomputed = max(a.worst for a in recomputed.values())
        worst_reused = max(a.worst for a in reused.values())
        if after_shift == "shift" or (after_shift is None and worst_reused < worst_recomputed):
            chosen, other = "shift", worst_recomputed
            scenarios.update(reused)
        else:
            other = worst_reused
            scenarios.update(recomputed)
    result = Result(arch, engine, scenarios, chosen, difference, other_after_shift=other)
    for name, overrides in controls(arch, config, difference).items():
        control = HFAttention.from_pretrained(hf_dir, **overrides)
        result.controls[name] = agreement(fresh.frames, fresh_frames(control, fresh))
    if arch in NUMERICS:
        imitating = HFAttention.from_pretrained(hf_dir, **(difference.overrides if difference else {}))
        NUMERICS[arch].apply(imitating)
        result.numerics = agreement(fresh.frames, fresh_frames(imitating, fresh))
    return result


def chat_prompt(start: str, end: str, model: str) -> str:
    """A chat of about 700 tokens (past Gemma 3's 512-token sliding window) in a turn format."""
    turns = [f"{start}user\nYou keep the harbour's ledger.{end}\n"]
    for i in range(14):
        cargo = ("salt", "wool", "tea", "iron")[i % 4]
        turns.append(f"{start}user\nFact {i}: the {i}th ship was called Vessel-{i * 7} and carried {i * 3} tons "
                     f"of {cargo}.{end}\n{start}{model}\nNoted, ship {i} is Vessel-{i * 7}.{end}\n")
    turns.append(f"{start}user\nWhat did the 5th ship carry, and what was it called?{end}\n{start}{model}\n")
    return "".join(turns)


#: the chat in Gemma's turn format and in ChatML (SmolLM2)
GEMMA_PROMPT = chat_prompt("<start_of_turn>", "<end_of_turn>", "model")
CHATML_PROMPT = chat_prompt("<|im_start|>", "<|im_end|>", "assistant")


async def real_model_request(url: str, text: str, max_length: int = 8) -> Request:
    """A greedy generation with frames from the server's own tokenization of `text`."""
    async with KoboldClient(url, timeout=600) as client:
        ids = (await client.tokenize(text)).token_ids
        info = await client.model_info()
        request = Request("real", ids, max_length, True)
        async with client.generate_stream(ids, max_length=max_length, temperature=0, rep_pen=1.0,
                                          banned_token_ids=sorted(info.end_token_ids),
                                          return_attention=True) as stream:
            async for event in stream:
                if isinstance(event, DoneEvent):
                    break
                assert isinstance(event, TokenEvent) and event.attention is not None
                request.generated.append(event.token_id)
                request.frames.append(np.array(event.attention.values, dtype=np.float32))
    return request
