"""The one attention entry point: the model calls this and never knows which kernel runs.

``impl`` picks the kernel:

- ``xla``: ``reference.xla_attention`` (materialises the scores; the CPU default).
- ``pallas_tpu`` / ``pallas_gpu``: our flash kernels (``flash_tpu``, ``flash_gpu``); ``pallas``
  means this platform's one. With ``interpret=True`` they run in the Pallas interpreter on any
  platform (numerics only; on CPU ``pallas`` then means the TPU kernel).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``, NVIDIA GPUs only.
- ``auto``: the fastest measured choice for the platform (``AUTO``; see docs/PERFORMANCE.md).

A request the platform cannot serve raises ``ConfigError`` naming the fix; nothing falls back
silently. The platform is the ambient mesh's device platform (``jax.set_mesh``), so AOT compiles
for a TPU topology from a CPU host choose TPU kernels, else ``jax.default_backend()``.

Under an ambient mesh the Pallas kernels run inside ``shard_map`` (Mosaic kernels cannot be
partitioned automatically; Triton ones would be gathered onto every device), split as the logical
axis rules (``elm_jax.parallel.rules``, including ``mesh.rules`` overrides) lay out the model's q, k
and v: batch by ``activation_batch``, heads by ``activation_heads`` / ``activation_kv_heads``. When
the head counts (or the batch) do not divide by those axes, that dimension is replicated for this
call instead, as the model replicates that layer's heads; the sequence is never split here (the
kernel needs every earlier key).
"""

from __future__ import annotations

import functools

import jax

from elm_jax.common_types import ATTENTION_IMPLS, HEAD_AXES
from elm_jax.errors import ConfigError
from elm_jax.kernels.reference import attention_mask, xla_attention
from elm_jax.parallel.rules import heads_divide, logical_to_spec

Q_AXES = ("activation_batch", "activation_length", "activation_heads", None)
KV_AXES = ("activation_batch", "activation_length", "activation_kv_heads", None)
SEGMENT_AXES = ("activation_batch", "activation_length")

# platform -> fastest measured implementation (docs/PERFORMANCE.md, "Attention"; bench/gpu.sh
# prints which impl won). cpu: the kernels only interpret there. tpu: no TPU measurement yet; the
# flash kernel is chosen because XLA materialises [batch, heads, seq, seq] scores, which stops
# fitting long before the flash kernel's O(seq) memory does. gpu: not measured yet, cuDNN (the
# vendor kernel) for half precision and pallas_gpu for float32, which cuDNN does not take.
AUTO = {"cpu": "xla", "tpu": "pallas_tpu", "gpu": "cudnn"}
_PALLAS = {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cpu": "pallas_tpu"}
_NEEDS = {"pallas_tpu": "tpu", "pallas_gpu": "gpu", "cudnn": "gpu"}


def target_platform() -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: the ambient mesh's devices, else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def resolve_impl(impl: str, *, platform: str, interpret: bool, dtype=None) -> str:
    """The concrete implementation ``impl`` means here, or a ``ConfigError`` that names the fix."""
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(f"unknown attention impl {impl!r}; choose one of "
                         f"{', '.join(ATTENTION_IMPLS)}")
    if impl == "auto":
        impl = AUTO.get(platform, "xla")
        if impl == "cudnn" and not _cudnn_serves(dtype):
            impl = "pallas_gpu"
    if impl == "pallas":
        if platform not in ("tpu", "gpu") and not interpret:
            raise ConfigError(f"attention impl 'pallas' needs a TPU or GPU, but the platform is "
                             f"{platform}; use impl='xla', or interpret=True to run the Pallas "
                             "kernels in the interpreter (slow, for testing)")
        impl = _PALLAS.get(platform, "pallas_tpu")
    needed = _NEEDS.get(impl)
    if needed and platform != needed and not (interpret and impl != "cudnn"):
        hint = ("" if impl == "cudnn" else
                ", or interpret=True to run the kernel in the Pallas interpreter")
        raise ConfigError(f"attention impl {impl!r} runs on {needed.upper()} only, but the "
                         f"platform is {platform}; use impl='auto' or 'xla'{hint}")
    if impl == "cudnn" and not _cudnn_serves(dtype):
        raise ConfigError(f"attention impl 'cudnn' needs bfloat16 or float16 inputs (got {dtype}); "
                         "use impl='pallas_gpu' or 'xla' for float32")
    return impl


def _cudnn_serves(dtype) -> bool:
    """cuDNN's flash attention takes half precision only (segment ids go in as a boolean mask)."""
    return dtype is None or jax.numpy.dtype(dtype) in (jax.numpy.bfloat16, jax.numpy.float16)


def _cudnn_attention(q, k, v, segment_ids, causal):
    mask = None
    if segment_ids is not None:
        mask = attention_mask(q.shape[1], k.shape[1], causal=False, q_segment_ids=segment_ids)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                        implementation="cudnn")


def _flash(impl: str):
    # Each Pallas backend pulls in its platform's lowering stack (Mosaic TPU, Triton): loaded only
    # when its kernel is asked for, so the model imports quickly on machines that never use it.
    if impl == "pallas_tpu":
        from elm_jax.kernels.flash_tpu import flash_attention_tpu
        return flash_attention_tpu
    from elm_jax.kernels.flash_gpu import flash_attention_gpu
    return flash_attention_gpu


def per_shard(fn, q: jax.Array, k: jax.Array, v: jax.Array,
              segment_ids: jax.Array | None) -> jax.Array:
    """Run ``fn(q, k, v, segment_ids)`` on each device's batch/head shard of the ambient mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) <= set(getattr(mesh, "manual_axes", ())):
        return fn(q, k, v, segment_ids)
    # Even with nothing to split (both replicated) the kernel goes inside shard_map: the
    # partitioner cannot place a Mosaic custom call by itself.
    keep_whole = ("activation_length",) + (() if heads_divide(q.shape[2], k.shape[2], mesh)
                                           else HEAD_AXES)
    q_spec = logical_to_spec(Q_AXES, q.shape, mesh, replicate=keep_whole)
    kv_spec = logical_to_spec(KV_AXES, k.shape, mesh, replicate=keep_whole)
    if segment_ids is None:
        return jax.shard_map(lambda q, k, v: fn(q, k, v, None), mesh=mesh,
                             in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                             check_vma=False)(q, k, v)
    seg_spec = logical_to_spec(SEGMENT_AXES, segment_ids.shape, mesh, replicate=keep_whole)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                         out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
    impl: str = "auto",
    interpret: bool = False,
) -> jax.Array:
    """Causal (by default) grouped-query attention.

    q ``[batch, seq, q_heads, head_dim]``, k and v ``[batch, seq, kv_heads, head_dim]``,
    ``segment_ids`` int32 ``[batch, seq]`` (tokens attend only within their segment).
    Returns q's shape and dtype. ``interpret`` runs the Pallas kernels in the interpreter.
    """
    impl = resolve_impl(impl, platform=target_platform(), interpret=interpret, dtype=q.dtype)
    if impl == "xla":
        return xla_attention(q, k, v, segment_ids=segment_ids, causal=causal)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, segment_ids, causal)
    kernel = functools.partial(_flash(impl), causal=causal, interpret=interpret)
    return per_shard(lambda q, k, v, s: kernel(q, k, v, s), q, k, v, segment_ids)
