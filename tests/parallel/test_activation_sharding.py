"""The main activations follow the logical-axis rules, and a config edit moves them.

Layouts are read back from what XLA produced (output shardings, shapes in the compiled HLO), not
from our own spec computation.
"""

import dataclasses
import re

import jax
import numpy as np
import pytest
from multiprocess_worker import small_config

from elm_jax.config import MeshConfig, rules_from_config
from elm_jax.errors import ConfigError
from elm_jax.model.layers import Q_HEADS, RESIDUAL
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.parallel.rules import constrain, use_rules
from elm_jax.train.step import make_train_step

BATCH = ("data", "fsdp")


def _layout(mesh, fn, shape):
    with jax.set_mesh(mesh):
        out = jax.jit(fn)(np.zeros(shape, np.float32))
    spec = tuple(out.sharding.spec)
    return spec + (None,) * (len(shape) - len(spec))


def test_attention_activations_shard_heads_only_when_the_tensor_axis_divides_them():
    mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert _layout(mesh, lambda x: constrain(x, Q_HEADS, heads=(8, 4)), (4, 8, 8, 16)) == (
        BATCH, None, "tensor", None)
    # 3 kv heads do not split in two: the whole block's heads replicate, its queries' too
    assert _layout(mesh, lambda x: constrain(x, Q_HEADS, heads=(6, 3)), (4, 8, 6, 16)) == (
        BATCH, None, None, None)
    # a batch the data axes do not divide stays whole
    assert _layout(mesh, lambda x: constrain(x, RESIDUAL), (3, 8, 16)) == (None, None, None)


def test_rules_from_the_config_move_an_activation():
    mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert _layout(mesh, lambda x: constrain(x, RESIDUAL), (4, 8, 16)) == (BATCH, None, None)
    rules = rules_from_config(MeshConfig(rules="activation_embed=tensor,activation_batch=data"))

    def sequence_parallel(x):
        with use_rules(rules):
            return constrain(x, RESIDUAL)

    assert _layout(mesh, sequence_parallel, (4, 8, 16)) == ("data", None, "tensor")


def test_bad_rules_are_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="mesh.rules: 'activation_embd=tensor'"):
        MeshConfig(rules="activation_embd=tensor").validate()
    with pytest.raises(ConfigError, match="mesh axes must be distinct names"):
        MeshConfig(rules="mlp=tensors").validate()


def _compiled_hlo(rules: str) -> str:
    base = small_config("unused", 1)
    config = dataclasses.replace(base, mesh=MeshConfig(data=2, fsdp=1, tensor=4, rules=rules))
    step = make_train_step(config, mesh_lib.make_mesh(config.mesh),
                           compiler_options={"xla_backend_optimization_level": 0})
    return step.lower().compile().as_text()


def test_tensor_parallel_step_splits_logits_and_ffn_and_the_config_can_undo_it():
    # tiny model: vocab 4224, FFN widths 256 and 768; batch 8 over data=2 -> 4 rows of 64 tokens
    rows, seq, vocab = 4, 64, 4224
    default = _compiled_hlo("")
    assert re.search(rf"f32\[{rows},{seq},{vocab // 4}\]", default)
    assert not re.search(rf"f32\[{rows},{seq},{vocab}\]", default)
    assert re.search(rf"\[{rows},{seq},{768 // 4}\]", default)
    assert not re.search(rf"\[{rows},{seq},768\]", default)
    replicated = _compiled_hlo("activation_vocab=,activation_mlp=")
    assert re.search(rf"f32\[{rows},{seq},{vocab}\]", replicated)
    assert re.search(rf"\[{rows},{seq},768\]", replicated)
