"""Chat formatting from the model's own chat template, one message at a time.

The GGUF's template is Jinja (as in transformers), so it is rendered with jinja2's sandbox.
To know exactly which tokens are a message's content and which are template, each message is
rendered with a sentinel in place of its content: what comes before the sentinel is the
message's template prefix, what comes after is its suffix. Models without a template get
ChatML, the documented fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from jinja2.sandbox import ImmutableSandboxedEnvironment

from halo_client.chatml import CHATML
from halo_client.errors import HaloError

_SENTINEL: Final = "\x00HALO-CONTENT\x00"


class TemplateError(HaloError):
    """The model's chat template cannot be rendered message by message."""


@dataclass(frozen=True)
class MessageParts:
    prefix: str
    suffix: str


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML
        self.is_fallback = source is None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(self.source)
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends
            raise TemplateError(f"the model's chat template does not parse: {exc}") from exc
        self._extra = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        try:
            return str(self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             **self._extra))
        except Exception as exc:
            raise TemplateError(f"the model's chat template failed to render: {exc}") from exc

    def message_parts(self, history: list[dict[str, str]], role: str) -> MessageParts:
        """Template text around a new message of `role` that follows `history`."""
        before = self.render(history)
        after = self.render([*history, {"role": role, "content": _SENTINEL}])
        if not after.startswith(before) or after.count(_SENTINEL) != 1:
            raise TemplateError(
                "the model's chat template does not render messages one after another; "
                "Halo Weave needs a template where adding a message appends text"
            )
        prefix, suffix = after[len(before):].split(_SENTINEL)
        return MessageParts(prefix, suffix)

    def generation_prefix(self, history: list[dict[str, str]]) -> str:
        """What the template adds to open the assistant's reply (e.g. `<|im_start|>assistant\\n`)."""
        plain = self.render(history)
        prompted = self.render(history, add_generation_prompt=True)
        if not prompted.startswith(plain):
            raise TemplateError("the chat template's generation prompt does not append to the history")
        return prompted[len(plain):]


def _raise(message: Any) -> None:
    raise TemplateError(f"the chat template refused: {message}")
