"""Under FSDP the activations stay split over the batch: the compiled step of an 8-way FSDP mesh
needs about the temporaries of 8-way data parallelism, not the whole batch's on every device."""

import dataclasses
import re

from multiprocess_worker import small_config

from elm_jax.config import MeshConfig
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train.step import make_train_step


def _compiled(mesh_config):
    base = small_config("unused", 1)
    config = dataclasses.replace(base, mesh=mesh_config,
                                 train=dataclasses.replace(base.train, batch_size=64))
    return make_train_step(config, mesh_lib.make_mesh(config.mesh)).lower().compile()


def test_fsdp_keeps_activations_batch_sharded():
    data = _compiled(MeshConfig(data=8, fsdp=1, tensor=1))
    fsdp = _compiled(MeshConfig(data=1, fsdp=8, tensor=1))
    vocab, seq = 4224, 64
    # Logits of the whole batch of 64 rows ([64, 64, 4224]) would mean every device computed all
    # of them; each device's share is 8 rows.
    assert not re.search(rf"\[64,{seq},{vocab}\]", fsdp.as_text())
    assert re.search(rf"\[8,{seq},{vocab}\]", fsdp.as_text())
    # Parameters are gathered layer by layer, so FSDP may need a little more scratch space than
    # data parallelism; the whole batch on every device needed over 3x.
    dp_temp = data.memory_analysis().temp_size_in_bytes
    assert fsdp.memory_analysis().temp_size_in_bytes < 1.5 * dp_temp
