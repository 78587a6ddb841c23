"""Compile our GPU kernels for an H100 on a machine without a GPU, and report their resources.

    PYTHONPATH=. python bench/triton_resources.py --head_dim 64 [--segments] [--warps 4,8] [--stages 2,3]

Lowers forward, dQ and dK/dV for CUDA (the target GPU is named through an abstract mesh; jax >=
0.11), takes the Triton IR Pallas produced, compiles it with the ``triton`` package for sm_90 and
runs its bundled ``ptxas -v``: per kernel and (warps, stages), shared memory, registers, spills and
whether Hopper's wgmma was used. Needs Python >= 3.12 with jax >= 0.11 and ``pip install triton``
(the H100 machines carry triton 3.6). This is how the default warps in ``flash_gpu.DEFAULTS`` were
chosen to avoid spills; it says nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp

from elm_jax.kernels.flash_common import BlockSizes
from elm_jax.kernels.flash_gpu import default_tuning, flash_attention_gpu


def triton_modules(head_dim: int, segments: bool, blocks: BlockSizes, seq: int = 2048) -> dict:
    """Kernel name -> Triton IR text, captured while lowering forward+backward for CUDA."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    modules = {}
    lower = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        text = result.module.operation.get_asm(enable_debug_info=False)
        modules[text.split("module @")[1].split()[0]] = text
        return result

    q = jax.ShapeDtypeStruct((8, seq, 12, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((8, seq, 3, head_dim), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((8, seq), jnp.int32)

    def loss(q, k, v, s):
        out = flash_attention_gpu(q, k, v, s if segments else None, block_sizes=blocks)
        return out.astype(jnp.float32).sum()

    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132,
                                       platform="gpu")
    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        with jax.sharding.use_abstract_mesh(
                jax.sharding.AbstractMesh((1,), ("gpu",), abstract_device=h100)):
            jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, ids).lower(
                lowering_platforms=("cuda",))
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    return modules


def resources(ir: str, warps: int, stages: int) -> str:
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ttir")
        with open(path, "w") as f:
            f.write(ir)
        kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                                options=dict(num_warps=warps, num_stages=stages))
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", report).group(1)
    spills = re.search(r"(\d+) bytes spill stores", report).group(1)
    return (f"{kernel.metadata.shared} | {registers} | {spills} | "
            f"{'yes' if 'wgmma' in kernel.asm['ptx'] else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--segments", action="store_true")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--stages", default="2,3")
    args = parser.parse_args()
    blocks, _ = default_tuning(args.head_dim)
    print(f"head_dim {args.head_dim}, segments {args.segments}, {blocks}")
    print("| kernel | warps | stages | shared bytes | registers | spill bytes | wgmma |")
    print("|---|---|---|---|---|---|---|")
    for name, ir in triton_modules(args.head_dim, args.segments, blocks).items():
        for warps in (int(w) for w in args.warps.split(",")):
            for stages in (int(s) for s in args.stages.split(",")):
                print(f"| {name} | {warps} | {stages} | {resources(ir, warps, stages)} |",
                      flush=True)


if __name__ == "__main__":
    main()
