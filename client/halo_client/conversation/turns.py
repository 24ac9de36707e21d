"""The turn protocol: how messages and replies become token ids, without I/O.

`TurnBuilder` knows the model's chat template, which tokens end a reply, and where a BOS
belongs; it says which texts need tokenizing (`Part`s) and takes the tokens back. It never
tokenizes itself, so the async `Chat` (tokenizing through the server) and the pruning
benchmark (tokenizing in process) drive the same code and send the model the same ids.

Per message: the template's prefix (tokenized with special tokens), the content (plain
text: special-token text in a message stays literal) and the template's suffix. Only the
conversation's first part keeps the BOS a tokenizer adds; a reply ends either with the model
writing the template's end marker itself (then the suffix's copy of it is dropped) or with the
suffix added by the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from halo_client.conversation.state import ConversationState, Role
from halo_client.conversation.template import ChatTemplate
from halo_client.messages import ModelInfo

Tokens = list[tuple[int, bytes]]


@dataclass(frozen=True)
class Part:
    """A text to tokenize: template text with special tokens parsed (and a BOS added where the
    tokenizer adds one), or message content as plain text."""

    text: str
    special: bool


@dataclass(frozen=True)
class MessagePlan:
    """The texts of one message, in order: template prefix, content, template suffix."""

    role: Role
    content: str
    prefix: Part
    body: Part
    suffix: Part

    @property
    def parts(self) -> tuple[Part, Part, Part]:
        return self.prefix, self.body, self.suffix


class TurnBuilder:
    def __init__(self, info: ModelInfo, template: ChatTemplate | None = None) -> None:
        self.info = info
        self.template = template or ChatTemplate(info.chat_template)
        #: tokens that end a reply (the model's EOS and EOT)
        self.end_tokens = info.end_token_ids
        #: the rendered-message history the template sees
        self.history: list[dict[str, str]] = []

    # ------------------------------------------------------------------ history

    def rebuild_history(self, state: ConversationState) -> None:
        """The history of a state built elsewhere (a loaded session): every complete turn's
        content, pruned or not, as the template saw it when the turn was added."""
        template = state.column("template")
        self.history = [
            {"role": t.role, "content": state.text([p for p in range(t.start, t.end) if not template[p]])}
            for t in state.turns if t.complete
        ]

    # ------------------------------------------------------------------ messages

    def plan_message(self, role: Role, content: str) -> MessagePlan:
        parts = self.template.message_parts(self.history, role)
        return MessagePlan(role, content, Part(parts.prefix, True), Part(content, False), Part(parts.suffix, True))

    def message_tokens(self, plan: MessagePlan, tokens: Sequence[Tokens], *,
                       first: bool) -> tuple[Tokens, Tokens, Tokens]:
        """(prefix, content, suffix) of a planned message from the tokens of its parts; `first`:
        it opens the conversation, so its prefix keeps the BOS."""
        prefix, content, suffix = (list(t) if p.text else [] for p, t in zip(plan.parts, tokens, strict=True))
        if not first:
            prefix = self.strip_added_bos(plan.prefix, prefix)
        return prefix, content, self.strip_added_bos(plan.suffix, suffix)

    def add_message(self, state: ConversationState, plan: MessagePlan, tokens: Sequence[Tokens]) -> int:
        """Append a planned message to `state` from the tokens of its parts; returns its turn."""
        prefix, content, suffix = self.message_tokens(plan, tokens, first=not state.turns)
        turn = state.add_message(plan.role, content, prefix, suffix)
        self.history.append({"role": plan.role, "content": plan.content})
        return turn

    # ------------------------------------------------------------------ replies

    def _history(self, then: MessagePlan | None) -> list[dict[str, str]]:
        return self.history if then is None else [*self.history, {"role": then.role, "content": then.content}]

    def plan_reply(self, then: MessagePlan | None = None) -> Part:
        """The template text that opens the assistant's reply (e.g. `<|im_start|>assistant\\n`);
        with `then`, the reply to that message once it is added."""
        return Part(self.template.generation_prefix(self._history(then)), True)

    def reply_prefix(self, prefix: Part, tokens: Tokens) -> Tokens:
        """The tokens that open the reply, from those of `plan_reply()`'s part."""
        return self.strip_added_bos(prefix, tokens) if prefix.text else []

    def begin_reply(self, state: ConversationState, prefix_tokens: Tokens) -> int:
        """Open the reply in `state` with `reply_prefix`'s tokens; the model's tokens follow."""
        return state.begin_reply(prefix_tokens)

    def plan_reply_suffix(self, then: MessagePlan | None = None) -> Part:
        """The template text that closes the assistant's reply (e.g. `<|im_end|>\\n`); with
        `then`, of the reply to that message once it is added."""
        return Part(self.template.message_parts(self._history(then), "assistant").suffix, True)

    def end_reply(self, state: ConversationState, generated: Sequence[int], suffix: Part,
                  tokens: Tokens) -> str:
        """Close the open reply after `generated` (the ids the model wrote, streamed into
        `state` with `add_generated`); returns the reply's text as the history keeps it."""
        stopped = bool(generated) and generated[-1] in self.end_tokens
        closing = self.strip_added_bos(suffix, tokens) if suffix.text else []
        if stopped and closing and closing[0][0] == generated[-1]:
            closing = closing[1:]  # the model wrote the template's end marker itself
        reply = state.turns[-1]
        content_start = reply.end - len(generated)
        content_end = reply.end - (1 if stopped else 0)
        text = state.text(range(content_start, content_end))
        state.end_reply(closing, stop_is_template=stopped)
        self.history.append({"role": "assistant", "content": text})
        return text

    # ------------------------------------------------------------------ BOS

    def strip_added_bos(self, part: Part, tokens: Tokens) -> Tokens:
        """Drop the BOS a tokenizer put before a template part: only the conversation's start
        has one. A BOS that is the part's own text (SmolLM2's BOS is `<|im_start|>`) stays."""
        bos = self.info.bos_token_id
        if tokens and bos is not None and tokens[0][0] == bos and not part.text.startswith(
                tokens[0][1].decode("utf-8", "replace")):
            return tokens[1:]
        return tokens
