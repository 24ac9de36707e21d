"""The model's own tokenizer, built from the GGUF's vocabulary, merges and pre-tokenizer.

Two kinds, as llama.cpp runs them:

* byte-level BPE (`tokenizer.ggml.model == "gpt2"`: Llama 3, SmolLM and most recent
  llama-family models) through the `tokenizers` library. Two instances: one that parses
  special-token text (`<|im_start|>`) into special tokens, as llama.cpp does with
  `parse_special`, and one that treats it as plain text (user-defined tokens are parsed by
  both, as in llama.cpp). A token's exact bytes come from the GPT-2 byte alphabet its
  vocabulary entry is written in.
* SentencePiece (`"llama"`: Llama 2, TinyLlama, Mistral): llama.cpp's score-ordered bigram
  merging, `▁` for spaces, a space prefix, and `<0xXX>` byte tokens for what the vocabulary
  lacks. Small enough to write out here.
"""

from __future__ import annotations

import heapq
import re
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
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SUPPORTED_TOKENIZERS: Final = ("gpt2", "llama")


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
    """The tokenizer a GGUF describes: `encode` as llama.cpp tokenizes, `token_bytes` exact."""

    def __init__(self, data: TokenizerData) -> None:
        if data.model not in SUPPORTED_TOKENIZERS:
            raise ModelFileError(
                f"tokenizer.ggml.model {data.model!r} is not supported by the reference backend; it runs "
                "byte-level BPE ('gpt2': Llama 3, SmolLM, ...) and SentencePiece ('llama': Llama 2, TinyLlama, "
                "Mistral) tokenizers")
        self.data = data
        self._impl: _BytePairTokenizer | _SentencePieceTokenizer = (
            _BytePairTokenizer(data) if data.model == "gpt2" else _SentencePieceTokenizer(data))

    @property
    def vocab_size(self) -> int:
        return len(self.data.tokens)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """llama.cpp's `tokenize(text, add_special=parse_special=add_special_tokens)`."""
        ids = self._impl.encode(text, add_special_tokens)
        if add_special_tokens:
            if self.data.add_bos and self.data.bos_id is not None:
                ids = [self.data.bos_id, *ids]
            if self.data.add_eos and self.data.eos_id is not None:
                ids = [*ids, self.data.eos_id]
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return self._impl.token_bytes[token_id]


class _BytePairTokenizer:
    def __init__(self, data: TokenizerData) -> None:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        if data.pre not in _PRE:
            raise ModelFileError(f"pre-tokenizer {data.pre!r} is not supported; known: {', '.join(sorted(_PRE))}")
        decoder = _byte_decoder()
        special = {i for i, t in enumerate(data.token_types) if t in (CONTROL, USER_DEFINED)}
        user_defined = {i for i, t in enumerate(data.token_types) if t == USER_DEFINED}
        self.token_bytes: list[bytes] = []
        for i, text in enumerate(data.tokens):
            if i in special:
                self.token_bytes.append(text.encode("utf-8"))
            else:
                try:
                    self.token_bytes.append(bytes(decoder[ch] for ch in text))
                except KeyError:
                    self.token_bytes.append(text.encode("utf-8"))
        vocab = {t: i for i, t in enumerate(data.tokens)}
        merges: list[tuple[str, str]] = []
        for m in data.merges:
            left, _, right = m.partition(" ")
            merges.append((left, right))
        digits, regex = _PRE[data.pre]
        splitters: list[Any] = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
        splitters += [pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]

        def build(parsed: set[int]) -> Tokenizer:
            tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                                       ignore_merges=data.pre in ("llama-bpe", "llama3")))
            tok.pre_tokenizer = pre_tokenizers.Sequence(splitters)
            tok.decoder = decoders.ByteLevel()
            tok.add_special_tokens([AddedToken(data.tokens[i], special=True, normalized=False)
                                    for i in sorted(parsed)])
            return tok

        self._special_tok = build(special)
        self._plain_tok = build(user_defined)  # llama.cpp splits user-defined tokens out even then

    def encode(self, text: str, parse_special: bool) -> list[int]:
        tok = self._special_tok if parse_special else self._plain_tok
        ids: list[int] = tok.encode(text, add_special_tokens=False).ids
        return ids


class _SentencePieceTokenizer:
    """llama.cpp's `llm_tokenizer_spm`: merge the adjacent pair whose merged piece has the best
    score (leftmost first on ties) until no merged pair is in the vocabulary; what is left and
    not in the vocabulary becomes byte tokens."""

    def __init__(self, data: TokenizerData) -> None:
        self.data = data
        self.vocab = {t: i for i, t in enumerate(data.tokens)}
        self.scores = data.scores
        fallback = data.unk_id if data.unk_id is not None else 0
        self.byte_ids = [self.vocab.get(f"<0x{b:02X}>", self.vocab.get(chr(b), fallback)) for b in range(256)]
        self.token_bytes: list[bytes] = []
        for text, kind in zip(data.tokens, data.token_types, strict=False):
            if kind == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                self.token_bytes.append(bytes([int(text[3:5], 16)]))
            elif kind in (NORMAL, USER_DEFINED):
                self.token_bytes.append(text.replace("\u2581", " ").encode("utf-8"))
            else:  # control and unknown tokens: their text
                self.token_bytes.append(text.encode("utf-8"))
        specials = [i for i, t in enumerate(data.token_types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        self._special_re = _alternation([data.tokens[i] for i in specials])
        self._user_re = _alternation([data.tokens[i] for i in specials if data.token_types[i] == USER_DEFINED])

    def encode(self, text: str, parse_special: bool) -> list[int]:
        pattern = self._special_re if parse_special else self._user_re
        fragments: list[str | int] = []
        at = 0
        for match in pattern.finditer(text) if pattern is not None else ():
            if match.start() > at:
                fragments.append(text[at : match.start()])
            fragments.append(self.vocab[match.group()])
            at = match.end()
        if at < len(text):
            fragments.append(text[at:])
        ids: list[int] = []
        previous_special = True  # llama.cpp: the first raw text, and any after a special token, gets the prefix
        for fragment in fragments:
            if isinstance(fragment, int):
                ids.append(fragment)
                previous_special = True
                continue
            prefix = " " if self.data.add_space_prefix and previous_special else ""
            ids += self._pieces((prefix + fragment).replace(" ", "\u2581"))
            previous_special = False
        return ids

    def _pieces(self, text: str) -> list[int]:
        n = len(text)
        # symbols: character ranges, linked; a merged symbol grows, the one it absorbed has length 0
        start, length = list(range(n)), [1] * n
        prev, nxt = [i - 1 for i in range(n)], [i + 1 if i + 1 < n else -1 for i in range(n)]
        queue: list[tuple[float, int, int, int]] = []
        rev_merge: dict[str, tuple[int, int]] = {}

        def try_pair(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            piece = text[start[left] : start[left] + length[left] + length[right]]
            token = self.vocab.get(piece)
            if token is None:
                return
            heapq.heappush(queue, (-self.scores[token], left, right, len(piece)))
            rev_merge[piece] = (left, right)

        for i in range(1, n):
            try_pair(i - 1, i)
        while queue:
            _, left, right, size = heapq.heappop(queue)
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue  # stale: one side was merged since
            length[left] += length[right]
            length[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            try_pair(prev[left], left)
            try_pair(left, nxt[left])

        ids: list[int] = []

        def resegment(symbol: int) -> None:
            piece = text[start[symbol] : start[symbol] + length[symbol]]
            token = self.vocab.get(piece)
            if token is not None:
                ids.append(token)
                return
            pair = rev_merge.get(piece)
            if pair is None:
                ids.extend(self.byte_ids[b] for b in piece.encode("utf-8"))
                return
            resegment(pair[0])
            resegment(pair[1])

        symbol = 0 if n else -1
        while symbol != -1:
            resegment(symbol)
            symbol = nxt[symbol]
        return ids


def _alternation(texts: list[str]) -> re.Pattern[str] | None:
    """A regex matching any of `texts`, longest first (llama.cpp tries longer special tokens first)."""
    texts = sorted({t for t in texts if t}, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in texts)) if texts else None
