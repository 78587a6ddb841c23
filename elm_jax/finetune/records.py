"""Fine-tuning records: read from JSON or JSON lines, checked up front, normalised per format.

Formats (``finetune.format``):

- ``alpaca``: ``instruction``, optional ``input``, and the response ``output`` (``answer`` when there
  is no ``output``): LLM-Adapters' ``commonsense_170k.json`` and Alpaca. The prompt is LLM-Adapters'
  template (``ALPACA_PROMPT`` / ``ALPACA_PROMPT_NO_INPUT``), the response is followed by EOS.
- ``chat``: ``messages``, a list of ``{"role", "content"}``; every assistant turn is trained on, as
  the chat template writes it.
- ``preference``: ``prompt`` and ``chosen`` / ``rejected`` responses, each a string or a message list
  ending in the assistant's reply (the binarised UltraFeedback layout); the prompt is rendered with
  the chat template's generation prompt.

Every record is normalised into plain dicts (``{"prompt", "response"}``, ``{"messages"}`` or
``{"messages", "chosen", "rejected"}``) and a bad one stops the run before training, naming the
file, the record and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elm_jax.errors import DataError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

Record = dict[str, Any]


def read_records(path: str | Path) -> list[Record]:
    """The objects of a JSON list or of a JSON-lines file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} not found; set finetune.train_file / finetune.validation_file to a "
                        "JSON list or JSON-lines file of records")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err}); fix the file") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not a JSON object ({err}); fix the line") from None
    bad = next((i for i, r in enumerate(records, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad} is not a JSON object; each record is one object")
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def _text(record: Mapping[str, Any], field: str, where: str, why: str) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise DataError(f"{where}: no text field '{field}' ({why}); add it or drop the record")
    return value


def alpaca(record: Mapping[str, Any], where: str) -> Record:
    field = "output" if "output" in record else "answer"
    response = _text(record, field, where, "the response to train on: 'output' or 'answer'")
    instruction = _text(record, "instruction", where, "the task")
    extra = record.get("input") or ""
    prompt = (ALPACA_PROMPT.format(instruction=instruction, input=extra) if extra
              else ALPACA_PROMPT_NO_INPUT.format(instruction=instruction))
    return {"prompt": prompt, "response": response}


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value):
        raise DataError(f"{where}: '{field}' must be a list of {{\"role\", \"content\"}} messages; "
                        "fix the record")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def chat(record: Mapping[str, Any], where: str) -> Record:
    messages = _messages(record.get("messages"), where, "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, so nothing to train on; drop the record")
    return {"messages": messages}


def _side(record: Mapping[str, Any], field: str, where: str) -> tuple[list[dict[str, str]], dict]:
    """(prompt messages, assistant reply) of ``chosen`` or ``rejected``."""
    value = record.get(field)
    if isinstance(value, str):
        prompt = record.get("prompt")
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else _messages(prompt, where, "prompt"))
        return messages, {"role": "assistant", "content": value}
    if value is None:
        raise DataError(f"{where}: no '{field}' response; a preference record needs prompt, chosen "
                        "and rejected")
    messages = _messages(value, where, field)
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: '{field}' must end with the assistant's reply; fix the record")
    return messages[:-1], messages[-1]


def preference(record: Mapping[str, Any], where: str) -> Record:
    prompt, chosen = _side(record, "chosen", where)
    rejected_prompt, rejected = _side(record, "rejected", where)
    if not prompt:
        raise DataError(f"{where}: the pair has no prompt; give 'prompt' or messages before the "
                        "replies")
    if rejected_prompt != prompt:
        raise DataError(f"{where}: chosen and rejected answer different prompts; a pair shares one")
    if chosen["content"] == rejected["content"]:
        raise DataError(f"{where}: chosen and rejected are the same response; DPO learns from their "
                        "difference, so drop the record or fix the pair")
    return {"messages": prompt, "chosen": chosen, "rejected": rejected}


def prompt_response(record: Mapping[str, Any], where: str) -> Record:
    return {"prompt": _text(record, "prompt", where, "the question"),
            "response": _text(record, "response", where, "the answer to train on")}


NORMALISE: dict[str, Callable[[Mapping[str, Any], str], Record]] = {
    "alpaca": alpaca, "chat": chat, "preference": preference, "shakespeare_plays": prompt_response}


def load(path: str | Path, format: str) -> list[Record]:
    """The normalised records of ``path`` in ``format`` (every record checked)."""
    normalise = NORMALISE[format]
    return [normalise(r, f"{path}: record {i}") for i, r in enumerate(read_records(path), 1)]
