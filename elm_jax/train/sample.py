"""A few sampled continuations at the end of a run: a glance at what the model learned.

Continues the first tokens of some validation rows with the KV-cached decoder of ``elm_jax.infer``
(temperature 0.8), on the training mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from elm_jax.config import Config
from elm_jax.infer import generate
from elm_jax.model import abstract_model

NEW_TOKENS = 48
TEMPERATURE = 0.8


def sample_lines(config: Config, params: Any, rows: list[np.ndarray], tokenizer: Any,
                 mesh: jax.sharding.Mesh) -> list[str]:
    """``"prompt >> continuation"`` for each row: its first tokens, then up to ``NEW_TOKENS``
    sampled ones (cut at EOS or the pad id), newlines shown as `` / ``."""
    prompt_len = min(8, config.data.seq_len // 4)
    prompts = [[int(t) for t in row[:prompt_len]] for row in rows]
    new_tokens = max(1, min(NEW_TOKENS, config.data.seq_len - prompt_len))
    stop = (config.data.eos_id, config.data.pad_id)
    model = nnx.merge(nnx.split(abstract_model(config.model))[0], params)
    with jax.set_mesh(mesh):
        out = generate(model, prompts, new_tokens, temperature=TEMPERATURE,
                       key=jax.random.key(config.train.seed), eos_id=stop)
    lines = []
    for prompt, row in zip(prompts, np.asarray(jax.device_get(out)).tolist()):
        new = row[len(prompt):]
        new = new[:next((i for i, t in enumerate(new) if t in stop), len(new))]
        text = f"{tokenizer.decode(prompt)} >> {tokenizer.decode(new)}"
        lines.append(text.replace("\n", " / "))
    return lines
