"""ChatML: the chat template Halo Weave assumes for a model that has none of its own.

It is also the template of the test models (the mock server and the tiny GGUF written for tests),
so a model without a template and every test double render messages the same way: one source.
"""

from __future__ import annotations

from typing import Final

#: the Jinja source, as transformers and llama.cpp render chat templates
CHATML: Final = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
