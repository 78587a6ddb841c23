"""Chat templates: message lists -> text pieces, the assistant turns marked as what to train on.

Templates are Jinja, rendered as HF's ``apply_chat_template`` renders them (sandboxed, trimmed
blocks; ``messages``, ``bos_token``, ``eos_token``, ``add_generation_prompt``, ``raise_exception``).
``finetune.chat_template = "auto"`` takes the tokenizer's own template (``chat_template`` in a
``tokenizer_config.json`` beside the tokenizer model or in the base directory) and otherwise ours,
``DEFAULT_TEMPLATE``: the Zephyr format of the alignment-handbook recipes the OpenELM instruct models
were tuned with::

    <|system|>\\n{system}</s>\\n<|user|>\\n{question}</s>\\n<|assistant|>\\n{answer}</s>\\n

An assistant turn is the text its message adds to the conversation rendered up to it with the
generation prompt: exactly what the model must produce after that prompt (with its EOS).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from elm_jax.errors import DataError

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
TOKENIZER_CONFIG = "tokenizer_config.json"

Piece = tuple[str, bool]  # (text, trainable)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template)
    except jinja2.TemplateError as err:
        raise DataError(f"the chat template does not parse ({err}); fix finetune.chat_template") from None


def tokenizer_template(directories: Iterable[Path]) -> str | None:
    """The ``chat_template`` of the first ``tokenizer_config.json`` found in ``directories``."""
    for directory in directories:
        path = Path(directory) / TOKENIZER_CONFIG
        if not path.is_file():
            continue
        template = json.loads(path.read_text()).get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template:
            return template
    return None


def resolve_template(setting: str, directories: Iterable[Path]) -> str:
    """The template text ``finetune.chat_template`` asks for ("auto", "default" or Jinja text)."""
    if setting == "default":
        return DEFAULT_TEMPLATE
    if setting == "auto":
        return tokenizer_template(directories) or DEFAULT_TEMPLATE
    return setting


class ChatTemplate:
    """Renders message lists with one template and the tokenizer's BOS / EOS strings."""

    def __init__(self, template: str, *, bos_token: str, eos_token: str):
        self.template = _compile(template)
        self.special = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool) -> str:
        try:
            return self.template.render(messages=list(messages), add_generation_prompt=generation_prompt,
                                        **self.special)
        except jinja2.TemplateError as err:
            raise DataError(f"the chat template refuses this conversation ({err}); fix the "
                            "record or finetune.chat_template") from None

    def pieces(self, messages: Sequence[Mapping[str, Any]]) -> list[Piece]:
        """The conversation as text pieces; the assistant turns are the trainable ones."""
        full = self.render(messages, generation_prompt=False)
        pieces: list[Piece] = []
        done = 0
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = self.render(messages[:i], generation_prompt=True)
            through = self.render(messages[:i + 1], generation_prompt=False)
            if not (through.startswith(before) and full.startswith(through) and len(before) >= done):
                raise DataError("the chat template does not render a conversation's beginning as "
                                "the beginning of the whole, so the assistant turns cannot be found; "
                                "use finetune.chat_template='default'")
            pieces += [(full[done:len(before)], False), (full[len(before):len(through)], True)]
            done = len(through)
        pieces.append((full[done:], False))
        return [(text, train) for text, train in pieces if text]
