"""A deterministic toy tokenizer for the mock server.

Greedy longest match over a small vocabulary of ChatML special tokens, common English pieces
and all 256 single bytes. Multi-byte UTF-8 characters that are not in the vocabulary fall back
to one token per byte, so the mock exercises the contract's "a token can hold half a character"
rule exactly as a byte-level BPE does.
"""

from __future__ import annotations

from typing import Final

SPECIALS: Final = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_ID: Final = 0  # <|endoftext|>
IM_START_ID: Final = 1
IM_END_ID: Final = 2
_BYTE_BASE: Final = len(SPECIALS)

_WORDS: Final = (
    "system", "user", "assistant", "\n", "\n\n", " ", ". ", "! ", "? ", ", ", ".", "!", "?",
    " the", " a", " an", " and", " of", " to", " in", " is", " it", " you", " that", " was",
    " for", " on", " are", " with", " as", " I", " his", " they", " be", " at", " one", " have",
    " this", " from", " or", " had", " by", " but", " what", " some", " we", " can", " out",
    " other", " were", " all", " there", " when", " up", " use", " your", " how", " said",
    " each", " she", " which", " do", " their", " if", " will", " way", " about", " many",
    " then", " them", " would", " like", " so", " these", " her", " long", " make", " thing",
    " see", " him", " two", " has", " look", " more", " day", " could", " go", " come", " did",
    " my", " no", " most", " who", " over", " know", " than", " call", " first", " people",
    " may", " down", " side", " been", " now", " find", " any", " new", " work", " part",
    " take", " get", " place", " made", " live", " where", " after", " back", " little",
    " only", " round", " man", " year", " came", " show", " every", " good", " me", " give",
    " our", " under", " name", " very", " through", " just", " form", " much", " great",
    " think", " say", " help", " low", " line", " before", " turn", " cause", " same",
    " mean", " move", " right", " boy", " old", " too", " does", " tell", " sentence",
    " set", " three", " want", " air", " well", " also", " play", " small", " end", " put",
    " home", " read", " hand", " port", " large", " spell", " add", " even", " land",
    " here", " must", " big", " high", " such", " follow", " act", " why", " ask", " men",
    " change", " went", " light", " kind", " off", " need", " house", " picture", " try",
    " us", " again", " animal", " point", " mother", " world", " near", " build", " self",
    " earth", " father", " Hello", "Hello", " hello", "hello", " mock", " model", " token",
    " attention", " reply", " context", " Sure", "Sure", " Yes", "Yes", " knowledge",
    " sentences", " period", " remember", " fact", " number", " prune", " bright",
)

VOCAB: Final[tuple[bytes, ...]] = (
    tuple(s.encode() for s in SPECIALS)
    + tuple(bytes([b]) for b in range(256))
    + tuple(dict.fromkeys(w.encode() for w in _WORDS if len(w.encode()) > 1))
)
VOCAB_SIZE: Final = len(VOCAB)
_IDS: Final[dict[bytes, int]] = {piece: i for i, piece in enumerate(VOCAB)}
_MAX_LEN: Final = max(len(p) for p in VOCAB)


def tokenize(text: str, add_special_tokens: bool = True) -> list[int]:
    """Greedy longest match. With `add_special_tokens`, special-token text becomes the special
    token and BOS is *not* added (ChatML models such as SmolLM2 add none)."""
    data = text.encode("utf-8")
    ids: list[int] = []
    i = 0
    while i < len(data):
        if add_special_tokens and data[i] == ord("<"):
            for sid, special in enumerate(SPECIALS):
                if data.startswith(special.encode(), i):
                    ids.append(sid)
                    i += len(special)
                    break
            else:
                special = ""
            if special:
                continue
        for size in range(min(_MAX_LEN, len(data) - i), 1, -1):
            tid = _IDS.get(data[i : i + size])
            if tid is not None and tid >= _BYTE_BASE + 256:
                ids.append(tid)
                i += size
                break
        else:
            ids.append(_BYTE_BASE + data[i])
            i += 1
    return ids


def token_bytes(token_id: int) -> bytes:
    return VOCAB[token_id]
