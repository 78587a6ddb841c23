"""What the array checksums cost: save and restore of an OpenELM-270M-shaped training state
(parameters + AdamW moments, float32, random values) with and without them, in one process.

    PYTHONPATH=. python3 bench/checkpoint_checksums.py [--size 270m] [--dir /tmp/ckbench]

"Without" replaces the digest and the verification by no-ops (what a save and a restore cost before
checksums existed); "with" is the code as it is. Each mode saves once (waiting for the async write
to finish) and restores once; the digest pass alone is timed too (after a first, compiling call).
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from elm_jax import checkpoint
from elm_jax.config import from_config_dict
from elm_jax.digest import tree_digests
from elm_jax.parallel.mesh import single_device_mesh
from elm_jax.presets import openelm_config
from elm_jax.train.step import TrainState, state_shardings


def random_state(config, mesh) -> tuple[TrainState, TrainState]:
    abstract, shardings = state_shardings(config, mesh)
    rng = np.random.default_rng(0)

    def fill(x, s):
        value = (rng.standard_normal(x.shape, np.float32) if np.issubdtype(x.dtype, np.floating)
                 else np.zeros(x.shape, x.dtype))
        return jax.device_put(value.astype(x.dtype), s)

    state = jax.tree.map(fill, abstract, shardings)
    targets = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           abstract, shardings)
    return state, targets


def measure(mode: str, config, state, targets, directory: Path) -> dict:
    run_dir = directory / mode
    shutil.rmtree(run_dir, ignore_errors=True)
    saved = {"tree_digests": checkpoint.tree_digests, "mismatches": checkpoint.mismatches}
    if mode == "without":
        checkpoint.tree_digests = lambda tree: {}
        checkpoint.mismatches = lambda expected, tree: []
    try:
        ckpt = checkpoint.Checkpointer(run_dir, config)
        start = time.perf_counter()
        ckpt.save(1, *state.checkpoint_items())
        ckpt.wait()
        save = time.perf_counter() - start
        start = time.perf_counter()
        restored = ckpt.restore_latest(*targets.checkpoint_items())
        jax.block_until_ready(restored)
        restore = time.perf_counter() - start
        ckpt.close()
    finally:
        checkpoint.tree_digests, checkpoint.mismatches = saved["tree_digests"], saved["mismatches"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"mode": mode, "save_s": round(save, 2), "restore_s": round(restore, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="270m")
    parser.add_argument("--dir", default="/tmp/elm_jax_checksum_bench")
    args = parser.parse_args()
    config = from_config_dict(openelm_config(args.size))
    state, targets = random_state(config, single_device_mesh())
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    leaves = len(jax.tree.leaves(state))
    print(json.dumps({"size": args.size, "state_gb": round(nbytes / 1e9, 3), "arrays": leaves,
                      "device": jax.devices()[0].device_kind}), flush=True)
    items = state.checkpoint_items()
    tree_digests(items)  # compile
    start = time.perf_counter()
    tree_digests(items)
    print(json.dumps({"digest_pass_s": round(time.perf_counter() - start, 2)}), flush=True)
    for mode in ("without", "with"):
        print(json.dumps(measure(mode, config, state, targets, Path(args.dir))), flush=True)


if __name__ == "__main__":
    main()
