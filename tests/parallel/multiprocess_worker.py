"""One process of a localhost multi-process run, started by the tests (not collected by pytest).

``python multiprocess_worker.py allgather`` joins through ``distributed.initialize()`` (from the
environment the test sets: explicit ``ELM_*`` or a faked SLURM step), builds one global array from
each process's rows, and prints what a cross-process reduction and gather see, as JSON.
"""

import json
import sys

import jax
import numpy as np

from elm_jax.parallel import distributed


def allgather() -> dict:
    launch = distributed.initialize()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rows_per_process = jax.local_device_count()
    local = np.arange(rows_per_process, dtype=np.float32) + 10 * jax.process_index()
    global_rows = jax.make_array_from_process_local_data(sharding, local[:, None])
    total = jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))(global_rows)
    gathered = jax.experimental.multihost_utils.process_allgather(global_rows, tiled=True)
    return dict(mode=launch.mode, process_index=jax.process_index(),
                process_count=jax.process_count(), local_devices=jax.local_device_count(),
                global_devices=jax.device_count(), total=float(total),
                gathered=np.asarray(gathered).ravel().tolist())


if __name__ == "__main__":
    import jax.experimental.multihost_utils  # noqa: F401

    print("RESULT " + json.dumps({"allgather": allgather}[sys.argv[1]]()), flush=True)
