"""elm-plan for a LoRA config: the frozen base is state, the optimizer state covers the adapters."""

import dataclasses
import importlib.util
from pathlib import Path

import jax

from elm_jax.config import from_config_dict
from elm_jax.finetune.plan import finetune_step_builder
from elm_jax.model import param_count
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train import plan as plan_lib
from elm_jax.train import topology

REPO = Path(__file__).resolve().parents[2]


def tiny_lora_config():
    spec = importlib.util.spec_from_file_location("tiny", REPO / "experiments" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cd = module.get_config()
    cd.finetune.update(base="not/here", targets=("token_embeddings", "qkv_proj", "out_proj", "proj_1",
                                                 "proj_2"), rank=8)
    cd.mesh.update(data=-1, fsdp=1, tensor=1)
    return from_config_dict(cd)


def adapter_count(config, r):
    """r (fan_in + fan_out) per adapted matrix, from the layer shapes (the tied embedding once)."""
    m, d, h = config.model, config.model.model_dim, config.model.head_dim
    total = r * (m.vocab_size + d)
    for s in m.layer_shapes():
        total += r * (d + s.q_heads * h) + 2 * r * (d + s.kv_heads * h)  # q, k, v
        total += r * (s.q_heads * h + d)  # out_proj
        total += 2 * r * (d + s.ffn_dim) + r * (s.ffn_dim + d)  # gate, up, down
    return total


def state_bytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_lora_state_is_the_base_plus_small_adapters_and_moments():
    config, build = finetune_step_builder(tiny_lora_config())
    step = build(config, mesh_lib.make_mesh(config.mesh))
    trainable = adapter_count(config, 8)
    shapes = step.state_shapes
    assert sum(x.size for x in jax.tree.leaves(shapes.params)) == trainable
    assert state_bytes(shapes.opt_state) - 2 * 4 * trainable < 64  # mu, nu (+ the step count)
    assert state_bytes(shapes.frozen) == 4 * param_count(config.model)  # the base, all of it
    assert 0.5 * param_count(config.model) > trainable
    # planned for a TPU slice (libtpu's compile-only devices); a tiny HBM share skips the compile
    result = plan_lib.plan(config, topology.parse("v5e-4"), build_step=build, hbm_fraction=1e-6)
    assert not result.compiled and result.trainable == trainable
    assert result.optimizer_bytes == state_bytes(shapes.opt_state)  # replicated over data
    line = next(line for line in plan_lib.report(result, mfu=0.4).splitlines()
                if "of which optimizer state" in line)
    assert f"{result.optimizer_bytes / 2 ** 20:.2f} MiB" in line and f"{trainable:,}" in line


def test_pretraining_plans_report_all_parameters_as_trainable():
    config = dataclasses.replace(tiny_lora_config(), finetune=dataclasses.replace(
        tiny_lora_config().finetune, base=""))
    step = plan_lib.default_step_builder(config, mesh_lib.make_mesh(config.mesh))
    assert sum(x.size for x in jax.tree.leaves(step.state_shapes.params)) == param_count(config.model)
    assert step.state_shapes.frozen == {}
