"""Shared by the fine-tuning tests: a tiny base run directory, record files and run configs."""

import json

import jax
import numpy as np
from cli_helpers import TEXT, tiny_run_config, write_run_dir
from flax import nnx
from train.synthetic import FAST_COMPILE

from elm_jax.checkpoint import load_model
from elm_jax.config import default_config, from_config_dict
from elm_jax.finetune.run import finetune
from elm_jax.parallel.mesh import single_device_mesh


def make_base(tmp_path):
    config = tiny_run_config(tmp_path)
    return write_run_dir(config), config


def base_params(run_dir):
    return nnx.to_pure_dict(nnx.state(load_model(run_dir)[1], nnx.Param))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def chat_records():
    """One short exchange per line of TEXT: the first words, then the rest as the answer."""
    out = []
    for line in TEXT:
        words = line.split()
        out.append({"messages": [{"role": "user", "content": " ".join(words[:3])},
                                 {"role": "assistant", "content": " ".join(words[3:])}]})
    return out


def preference_records():
    """The true rest of a line is chosen, the rest of the next line rejected."""
    out = []
    for i, line in enumerate(TEXT):
        words, other = line.split(), TEXT[(i + 1) % len(TEXT)].split()
        out.append({"prompt": " ".join(words[:3]), "chosen": " ".join(words[3:]),
                    "rejected": " ".join(other[3:])})
    return out


def ft_config(base, tmp_path, run="run", **finetune):
    """A fine-tuning config on ``base`` (run directory, base config) with chat SFT records."""
    run_dir, base_config = base
    cd = default_config()
    cd.finetune.update(base=str(run_dir), format="chat", targets=("qkv_proj", "proj_2"), rank=4,
                       alpha=8.0, train_file=write_jsonl(tmp_path / "chat.jsonl", chat_records()))
    cd.finetune.update(**finetune)
    cd.data.update(tokenizer=base_config.data.tokenizer, pad_id=base_config.data.pad_id,
                   seq_len=48, mode="pad")
    cd.train.update(steps=8, batch_size=4, peak_lr=1e-2, warmup_steps=2, cosine_period=100,
                    weight_decay=0.0, log_every=2, save_every=4, eval_batches=0, sample_lines=0,
                    run_dir=str(tmp_path / run))
    cd.mesh.update(data=1, fsdp=1, tensor=1)
    return from_config_dict(cd)


def run(config):
    return finetune(config, mesh=single_device_mesh(), show_progress=False,
                    compiler_options=FAST_COMPILE, log=lambda _: None)


def logits(model_or_params, config, tokens):
    """f32 logits of a model, or of a parameter dict on ``config``'s model."""
    from elm_jax.train.step import graphdef

    model = (model_or_params if isinstance(model_or_params, nnx.Module)
             else nnx.merge(graphdef(config), model_or_params))
    return np.asarray(jax.jit(lambda m, t: m(t))(model, tokens))
