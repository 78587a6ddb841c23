"""elm-finetune end to end on a tiny base run: what trains and what stays frozen, exact resume, the
merged HF export, the adapter directory round trip, DPO raising its margin, one-line errors."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_helpers import run_module
from finetune_helpers import base_params, ft_config, logits, preference_records, run, write_jsonl
from flax import nnx

from elm_jax.checkpoint import load_model
from elm_jax.convert.hf import load_hf
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.errors import ConfigError
from elm_jax.finetune.adapters import count
from elm_jax.finetune.base import load_params, open_base
from elm_jax.finetune.export import apply_adapter
from elm_jax.finetune.objective import merged
from elm_jax.model import abstract_params
from elm_jax.parallel.mesh import param_shardings, single_device_mesh
from elm_jax.train.step import graphdef

TOKENS = (np.arange(30, dtype=np.int32).reshape(2, 15) * 7) % 150


@pytest.fixture(scope="module")
def lora_run(base_run, tmp_path_factory):
    config = ft_config(base_run, tmp_path_factory.mktemp("lora"))
    return config, run(config)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_only_the_adapters_train(lora_run, base_run):
    config, result = lora_run
    state = result.train.state
    base = base_params(base_run[0])
    assert set(state.params) == {"adapters"}
    for a, b in zip(jax.tree.leaves(state.frozen["model"]), jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the whole base, untouched
    adapters = count(state.params)
    assert adapters < 0.1 * count(base)
    moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if np.ndim(leaf) > 0]
    assert sum(np.size(m) for m in moments) == 2 * adapters  # Adam's mu and nu, adapters only
    b = state.params["adapters"]["layers"][0]["attn"]["q_proj"]["b"]
    assert np.abs(np.asarray(b)).max() > 0  # B moved away from zero
    losses = [r["loss"] for r in records(result.train.hf_path.parent)]
    assert losses[-1] < losses[0]


def test_merged_export_and_adapter_directory_give_the_adapted_logits(lora_run, base_run):
    _, result = lora_run
    config, state = result.config, result.train.state
    adapted = logits(merged(config, state.frozen["model"], state.params), config, TOKENS)
    base_logits = logits(base_params(base_run[0]), config, TOKENS)
    assert np.abs(adapted - base_logits).max() > 1e-3  # the adapters changed the model
    _, hf_model = load_hf(result.train.hf_path)
    np.testing.assert_allclose(logits(hf_model, config, TOKENS), adapted, rtol=1e-5, atol=1e-5)
    _, base_model = load_model(base_run[0])
    tuned = apply_adapter(base_model, result.adapter_path)
    np.testing.assert_allclose(logits(tuned, config, TOKENS), adapted, rtol=1e-5, atol=1e-5)
    size = lambda d: sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())  # noqa: E731
    assert size(result.adapter_path) < 0.5 * size(Path(base_run[0]) / "checkpoints")


def test_resume_of_an_adapter_run_is_exact(lora_run, base_run, tmp_path):
    """4 steps, then the same command to 8: the adapters of the uninterrupted run, bit for bit."""
    config, result = lora_run
    resumed = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(tmp_path)))
    run(dataclasses.replace(resumed, train=dataclasses.replace(resumed.train, steps=4)))
    second = run(resumed)
    assert second.train.step == 8
    for a, b in zip(jax.tree.leaves(second.train.state.params), jax.tree.leaves(result.train.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    straight = {r["step"]: r["loss"] for r in records(result.train.hf_path.parent)}
    assert {r["step"]: r["loss"] for r in records(tmp_path)} == straight


def test_dpo_raises_the_chosen_minus_rejected_margin(base_run, tmp_path):
    """At the first step the policy is its reference (margin 0, loss log 2); a few LoRA steps on
    the same pairs make the chosen responses likelier than the rejected ones."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records())
    config = ft_config(base_run, tmp_path, method="dpo", format="preference", train_file=pairs,
                       dpo_beta=0.5, dpo_loss="sigmoid")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, seq_len=96),
                                 train=dataclasses.replace(config.train, steps=10, log_every=1,
                                                           peak_lr=2e-2))
    result = run(config)
    logged = records(tmp_path / "run")
    assert logged[0]["reward_margin"] == 0.0 and logged[0]["loss"] == pytest.approx(np.log(2))
    assert logged[-1]["reward_margin"] > 0.5
    assert logged[-1]["reward_accuracy"] > 0.5 and logged[-1]["loss"] < 0.5 * np.log(2)
    assert result.train.state.params.keys() == {"adapters"}


def test_a_regex_that_matches_nothing_is_a_one_line_error(base_run):
    out = run_module("elm_jax.cli.finetune", "--config", "experiments/finetune/shakespeare_lora.py",
                     f"--config.finetune.base={base_run[0]}", "--config.data.pad_id=150",
                     "--config.finetune.targets=('qkvproj',)")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: finetune.targets regex 'qkvproj' matches no parameter it can apply to (names look "
        "like layers/0/attn/q_proj or CoreNet's transformer.layers.0.attn.qkv_proj.weight); fix or "
        "remove it"]


def test_elm_generate_folds_the_adapter_into_its_base(lora_run, base_run):
    """``elm-generate --checkpoint BASE --adapter DIR`` decodes greedily what the adapted model
    (the run's merged parameters, in process) predicts token by token."""
    _, result = lora_run
    config, state = result.config, result.train.state
    tokenizer = Tokenizer(config.data.tokenizer, pad_id=config.data.pad_id)
    prompt, new_tokens, width = "To be, or not", 5, 24
    ids = list(tokenizer.encode(prompt, bos=True, eos=False))
    model = nnx.merge(graphdef(config), merged(config, state.frozen["model"], state.params))
    forward = jax.jit(lambda m, t: m(t))  # causal: padding after the last id never changes it
    for _ in range(new_tokens):
        padded = np.array([ids + [0] * (width - len(ids))], np.int32)
        ids.append(int(np.argmax(np.asarray(forward(model, padded))[0, len(ids) - 1])))
        if ids[-1] == tokenizer.eos_id:
            ids.pop()
            break
    out = run_module("elm_jax.cli.generate", f"--checkpoint={base_run[0]}",
                     f"--adapter={result.adapter_path}", f"--prompt={prompt}",
                     f"--max_new_tokens={new_tokens}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == tokenizer.decode(ids) + "\n"


def test_an_hf_directory_is_a_base_and_a_finetune_run_is_not(lora_run):
    """The run's merged export, opened as a base, gives the adapted parameters; the fine-tuning
    run directory itself holds no whole model and says where the merged one is."""
    _, result = lora_run
    config, state = result.config, result.train.state
    base = open_base(str(result.train.hf_path))
    assert base.kind == "hf"
    shardings = param_shardings(abstract_params(config.model), single_device_mesh())
    loaded = load_params(base, config.model, shardings)
    for a, b in zip(jax.tree.leaves(loaded),
                    jax.tree.leaves(merged(config, state.frozen["model"], state.params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="is an elm-finetune run .* start from its hf-step<N> export"):
        open_base(str(result.train.hf_path.parent))
