"""The building blocks of an OpenELM layer: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Every parameter carries ``logical_axes`` metadata (``"embed"``, ``"heads"``, ``"kv_heads"``,
``"head_dim"``, ``"mlp"``, ``"vocab"``, ``"norm"``) and the main activations are constrained to
logical names too (``"activation_batch"``, ``"activation_heads"``, ...); the rules table of
``elm_jax.parallel.rules`` maps those names to mesh axes, so changing the parallelism never touches
this file. The metadata is our own key rather than
Flax's sharding annotation, whose name and eager behaviour change between Flax releases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from elm_jax.kernels import attention
from elm_jax.parallel.rules import constrain

RESIDUAL = ("activation_batch", "activation_length", "activation_embed")
Q_HEADS = ("activation_batch", "activation_length", "activation_heads", None)
KV_HEADS = ("activation_batch", "activation_length", "activation_kv_heads", None)
MLP = ("activation_batch", "activation_length", "activation_mlp")

Initializer = nnx.initializers.Initializer


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], dtype: jnp.dtype,
          axes: tuple[str, ...]) -> nnx.Param:
    """A parameter drawn from ``init`` and tagged with its logical axis names."""
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


def normal(std: float) -> Initializer:
    return nnx.initializers.normal(stddev=std)


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, statistics in float32 and cast back before the weight (as in HF)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs,
                 axis: str = "norm"):
        self.eps = eps
        self.weight = param(rngs, nnx.initializers.ones, (dim,), param_dtype, (axis,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.weight[...].astype(x.dtype)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin ``[batch, seq, 1, head_dim]`` for integer ``positions`` ``[batch, seq]``."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Non-interleaved ("rotate half") rotary embedding, computed in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query attention with per-head q/k RMSNorm applied before RoPE.

    Q, K and V are kept as three ``[embed, heads, head_dim]`` tensors (the HF checkpoint fuses
    them into ``qkv_proj``; ``elm_jax.convert.hf`` splits and joins) so each can be sharded by
    heads. Query head ``j * g + i`` reads kv head ``j`` (repeat-interleave), with no copy of K/V.
    """

    def __init__(self, *, model_dim: int, q_heads: int, kv_heads: int, head_dim: int,
                 num_layers: int, eps: float, rope_theta: float, attention_impl: str,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs,
                 attention_interpret: bool = False):
        self.head_dim = head_dim
        self.heads = (q_heads, kv_heads)
        self.rope_theta = rope_theta
        self.attention_impl = attention_impl
        self.attention_interpret = attention_interpret
        self.dtype = dtype
        in_init = normal(model_dim ** -0.5)
        out_init = normal(model_dim ** -0.5 * (2 * num_layers) ** -0.5)
        self.q_proj = param(rngs, in_init, (model_dim, q_heads, head_dim), param_dtype,
                            ("embed", "heads", "head_dim"))
        self.k_proj = param(rngs, in_init, (model_dim, kv_heads, head_dim), param_dtype,
                            ("embed", "kv_heads", "head_dim"))
        self.v_proj = param(rngs, in_init, (model_dim, kv_heads, head_dim), param_dtype,
                            ("embed", "kv_heads", "head_dim"))
        self.q_norm = RMSNorm(head_dim, eps=eps, param_dtype=param_dtype, rngs=rngs,
                              axis="head_dim")
        self.k_norm = RMSNorm(head_dim, eps=eps, param_dtype=param_dtype, rngs=rngs,
                              axis="head_dim")
        self.out_proj = param(rngs, out_init, (q_heads, head_dim, model_dim), param_dtype,
                              ("heads", "head_dim", "embed"))

    def project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v ``[batch, seq, heads, head_dim]`` after q/k norm and RoPE (the cacheable part)."""
        x = x.astype(self.dtype)
        q, k, v = (jnp.einsum("bsd,dhk->bshk", x, w[...].astype(self.dtype))
                   for w in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = rope_angles(positions, self.head_dim, self.rope_theta)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        return (constrain(q, Q_HEADS, heads=self.heads), constrain(k, KV_HEADS, heads=self.heads),
                constrain(v, KV_HEADS, heads=self.heads))

    def output(self, attended: jax.Array) -> jax.Array:
        """Project attended values ``[batch, seq, heads, head_dim]`` back to the residual stream."""
        return jnp.einsum("bshk,hkd->bsd", attended, self.out_proj[...].astype(self.dtype))

    def __call__(self, x: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        q, k, v = self.project(x, positions)
        attended = attention(q, k, v, segment_ids=segment_ids, causal=True,
                             impl=self.attention_impl, interpret=self.attention_interpret)
        attended = checkpoint_name(constrain(attended, Q_HEADS, heads=self.heads), "attention_out")
        return self.output(attended)


class SwiGLU(nnx.Module):
    """(silu(x W_gate) * (x W_up)) W_down; HF's ``proj_1`` is [W_gate | W_up] (gate first)."""

    def __init__(self, *, model_dim: int, ffn_dim: int, num_layers: int, dtype: jnp.dtype,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        in_init = normal(model_dim ** -0.5)
        out_init = normal(model_dim ** -0.5 * (2 * num_layers) ** -0.5)
        self.gate = param(rngs, in_init, (model_dim, ffn_dim), param_dtype, ("embed", "mlp"))
        self.up = param(rngs, in_init, (model_dim, ffn_dim), param_dtype, ("embed", "mlp"))
        self.down = param(rngs, out_init, (ffn_dim, model_dim), param_dtype, ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        gate = x @ self.gate[...].astype(self.dtype)
        up = x @ self.up[...].astype(self.dtype)
        hidden = constrain(jax.nn.silu(gate) * up, MLP)
        return hidden @ self.down[...].astype(self.dtype)
