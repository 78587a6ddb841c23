"""``elm-generate``: continue prompts with a trained or imported OpenELM, streaming the text.

    elm-generate --checkpoint runs/tiny --prompt "To be, or not to be"
    elm-generate --checkpoint OpenELM-270M --tokenizer llama2/tokenizer.model \\
        --prompts_file prompts.txt --batch_size 8 --temperature 0.8 --top_p 0.95

With ``--batch_size 1`` (the default) each completion is printed token by token as it is produced;
larger batches print each completion when its batch is done. ``--output`` also writes one JSON
object per prompt (prompt, completion, token counts) to a new file. On several processes
(``--num_processes`` ..., see ``model_flags``) every process decodes and process 0 prints.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
from absl import flags

from elm_jax.cli import common, model_flags
from elm_jax.common_types import DTYPES
from elm_jax.errors import UsageError
from elm_jax.infer import Sampling, check_length, generate, stream

PROMPT = flags.DEFINE_multi_string("prompt", [], "a prompt (repeatable)")
PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "a text file with one prompt per line")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "tokens to generate per prompt", lower_bound=1)
TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy", lower_bound=0.0)
TOP_K = flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0 = all)", lower_bound=0)
TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1 = off)")
SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for sampling")
BATCH = flags.DEFINE_integer("batch_size", 1, "prompts decoded together (1 streams tokens)",
                             lower_bound=1)
CACHE_DTYPE = flags.DEFINE_enum("cache_dtype", None, list(DTYPES),
                                "KV cache dtype (default: bfloat16 on accelerators, else compute)")
ADD_BOS = flags.DEFINE_bool("add_bos", True, "start every prompt with the BOS token")
STOP_AT_EOS = flags.DEFINE_bool("stop_at_eos", True, "end a completion at the EOS token")
OUTPUT = flags.DEFINE_string("output", None, "also write the completions as JSONL to this new file")
common.hyphen_aliases(PROMPTS_FILE, MAX_NEW, TOP_K, TOP_P, BATCH, CACHE_DTYPE, ADD_BOS,
                      STOP_AT_EOS)


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """``--prompt`` values, then the non-empty lines of ``--prompts_file``."""
    texts = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise UsageError(f"--prompts_file {path} does not exist")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UsageError("nothing to generate from: give --prompt \"...\" or --prompts_file")
    return texts


class TextStream:
    """Turns a growing list of token ids into the newly printable text at each step.

    Decodes prompt + completion together so word-initial spaces survive, and holds back a
    trailing partial UTF-8 character (SentencePiece byte fallback) until it is complete.
    """

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer, self.ids = tokenizer, list(prompt_ids)
        self.shown = len(tokenizer.decode(self.ids))

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd")
        new, self.shown = text[self.shown:], max(self.shown, len(text))
        return new


def _completion(tokenizer, prompt_ids: list[int], new_ids: Sequence[int]) -> str:
    return tokenizer.decode([*prompt_ids, *new_ids])[len(tokenizer.decode(prompt_ids)):]


def _new_tokens(row: Sequence[int], prompt_len: int, max_new: int, eos: int | None) -> list[int]:
    new = [int(t) for t in row[prompt_len:prompt_len + max_new]]
    return new[:new.index(eos)] if eos is not None and eos in new else new


def encode_prompts(model, tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of every prompt, checked before the first one is generated: none is empty, none
    outgrows the model's context with ``--max_new_tokens``."""
    encoded = [list(tokenizer.encode(t, bos=ADD_BOS.value, eos=False)) for t in texts]
    for i, (text, ids) in enumerate(zip(texts, encoded)):
        if not ids:
            raise UsageError(f"prompt {i + 1} ({text!r}) has no tokens to continue; give it some "
                             "text, or drop --noadd_bos so that it starts with BOS")
    check_length(model, max(len(ids) for ids in encoded), MAX_NEW.value)
    return encoded


def run_prompts(model, tokenizer, texts: list[str], *, out=sys.stdout) -> Iterator[dict]:
    """Generate for every prompt (streaming at batch size 1); yields one record per prompt."""
    eos = tokenizer.eos_id if STOP_AT_EOS.value else None
    settings = dict(temperature=TEMPERATURE.value, top_k=TOP_K.value, top_p=TOP_P.value,
                    eos_id=eos, cache_dtype=CACHE_DTYPE.value)
    key = jax.random.key(SEED.value)
    encoded = encode_prompts(model, tokenizer, texts)
    for first in range(0, len(texts), BATCH.value):
        chunk = texts[first:first + BATCH.value]
        ids = encoded[first:first + BATCH.value]
        chunk_key = jax.random.fold_in(key, first)
        if len(chunk) == 1:
            shown = TextStream(tokenizer, ids[0])
            print(chunk[0], end="", file=out, flush=True)
            new = []
            for step in stream(model, ids, MAX_NEW.value, key=chunk_key, **settings):
                token = int(step.tokens[0])
                if eos is not None and token == eos:
                    break
                new.append(token)
                print(shown.push(token), end="", file=out, flush=True)
            print(file=out, flush=True)
            rows = [new]
        else:
            out_ids = generate(model, ids, MAX_NEW.value, key=chunk_key, **settings)
            rows = [_new_tokens(row, len(p), MAX_NEW.value, eos) for row, p in zip(
                jax.device_get(out_ids).tolist(), ids)]
            for text, prompt_ids, new in zip(chunk, ids, rows):
                print(text + _completion(tokenizer, prompt_ids, new) + "\n", file=out, flush=True)
        for text, prompt_ids, new in zip(chunk, ids, rows):
            yield {"prompt": text, "completion": _completion(tokenizer, prompt_ids, new),
                   "prompt_tokens": len(prompt_ids), "new_tokens": len(new)}


def _main(argv: list[str]) -> None:
    del argv
    texts = read_prompts(PROMPT.value, PROMPTS_FILE.value)
    Sampling(TEMPERATURE.value, TOP_K.value, TOP_P.value)  # bad settings fail before the model loads
    output = common.new_output(OUTPUT.value)
    opened = model_flags.open_model()
    tokenizer = opened.tokenizer()
    # Every process decodes (the model may span them); process 0 alone shows and writes the text.
    with jax.set_mesh(opened.mesh), open(os.devnull, "w") as silent:
        records = list(run_prompts(opened.loaded.model, tokenizer, texts,
                                   out=sys.stdout if model_flags.lead() else silent))
    if output is not None and model_flags.lead():
        common.write_new_file(output, "".join(json.dumps(r) + "\n" for r in records))


main = common.entry(_main)

if __name__ == "__main__":
    main()
