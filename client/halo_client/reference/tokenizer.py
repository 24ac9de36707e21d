"""The model's own tokenizer, built from the GGUF's vocabulary, merges and pre-tokenizer.

Byte-level BPE (`tokenizer.ggml.model == "gpt2"`, used by Llama 3, SmolLM and most recent
llama-family models) through the `tokenizers` library. Two instances: one that parses
special-token text (`<|im_start|>`) into special tokens, as llama.cpp does with
`parse_special`, and one that treats it as plain text. A token's exact bytes come from the
GPT-2 byte alphabet its vocabulary entry is written in.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

from halo_client.reference.gguf_model import ModelFileError, TokenizerData

#: llama.cpp's pre-tokenizer regexes, by `tokenizer.ggml.pre`
_GPT2: Final = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3: Final = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE: Final[dict[str, tuple[bool, str]]] = {
    # name: (digits split one by one first, regex)
    "smollm": (True, _GPT2), "starcoder": (True, _GPT2), "refact": (True, _GPT2),
    "gpt2": (False, _GPT2), "default": (False, _GPT2),
    "llama-bpe": (False, _LLAMA3), "llama3": (False, _LLAMA3), "smaug-bpe": (False, _LLAMA3),
}
CONTROL, USER_DEFINED = 3, 4


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable alphabet for bytes, reversed: character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class GGUFTokenizer:
    def __init__(self, data: TokenizerData) -> None:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        if data.model != "gpt2":
            raise ModelFileError(
                f"tokenizer.ggml.model {data.model!r} is not supported by the reference backend; "
                "it runs byte-level BPE ('gpt2') tokenizers (Llama 3, SmolLM, ...)")
        if data.pre not in _PRE:
            raise ModelFileError(f"pre-tokenizer {data.pre!r} is not supported; known: {', '.join(sorted(_PRE))}")
        self.data = data
        decoder = _byte_decoder()
        self.special = {i for i, t in enumerate(data.token_types) if t in (CONTROL, USER_DEFINED)}
        self._bytes: list[bytes] = []
        for i, text in enumerate(data.tokens):
            if i in self.special:
                self._bytes.append(text.encode("utf-8"))
            else:
                try:
                    self._bytes.append(bytes(decoder[ch] for ch in text))
                except KeyError:
                    self._bytes.append(text.encode("utf-8"))
        vocab = {t: i for i, t in enumerate(data.tokens)}
        merges: list[tuple[str, str]] = []
        for m in data.merges:
            left, _, right = m.partition(" ")
            merges.append((left, right))
        digits, regex = _PRE[data.pre]
        splitters: list[Any] = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
        splitters += [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]

        def build(with_special: bool) -> Tokenizer:
            tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                       ignore_merges=data.pre in ("llama-bpe", "llama3")))
            tok.pre_tokenizer = pre_tokenizers.Sequence(splitters)
            tok.decoder = decoders.ByteLevel()
            if with_special:
                tok.add_special_tokens([AddedToken(data.tokens[i], special=True, normalized=False)
                                        for i in sorted(self.special)])
            return tok

        self._special_tok = build(True)
        self._plain_tok = build(False)

    @property
    def vocab_size(self) -> int:
        return len(self.data.tokens)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if add_special_tokens:
            ids: list[int] = self._special_tok.encode(text, add_special_tokens=False).ids
            if self.data.add_bos and self.data.bos_id is not None:
                ids = [self.data.bos_id, *ids]
            return ids
        plain: list[int] = self._plain_tok.encode(text, add_special_tokens=False).ids
        return plain

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]
