"""The OpenELM decoder: layer-wise scaled blocks, unrolled because every layer has its own shapes.

Also parameter and FLOP counts, computed from the config alone (``nnx.eval_shape``: a 3B model is
counted without allocating it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from elm_jax.config import ModelConfig
from elm_jax.model.layers import RESIDUAL, Attention, RMSNorm, SwiGLU, normal, param
from elm_jax.parallel.rules import constrain

LOGITS = ("activation_batch", "activation_length", "activation_vocab")

# the implementation of each name in common_types.REMAT_POLICIES ("none" runs the layer plainly)
CHECKPOINT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class DecoderLayer(nnx.Module):
    """Pre-norm attention then pre-norm SwiGLU, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig, index: int, *, rngs: nnx.Rngs):
        shape = cfg.layer_shapes()[index]
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = dict(eps=cfg.norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = RMSNorm(cfg.model_dim, **norm)
        self.attn = Attention(
            model_dim=cfg.model_dim, q_heads=shape.q_heads, kv_heads=shape.kv_heads,
            head_dim=cfg.head_dim, num_layers=cfg.num_layers, eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta, attention_impl=cfg.attention_impl, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs, attention_interpret=cfg.attention_interpret,
        )
        self.ffn_norm = RMSNorm(cfg.model_dim, **norm)
        self.ffn = SwiGLU(model_dim=cfg.model_dim, ffn_dim=shape.ffn_dim,
                          num_layers=cfg.num_layers, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        return self.block(x, lambda h: self.attn(h, positions, segment_ids))

    def block(self, x: jax.Array, attend: Callable[[jax.Array], jax.Array]) -> jax.Array:
        """The residual structure around any attention: ``attend`` maps normed x to its output.

        Training passes the layer's own attention; decoding passes one that reads a KV cache
        (``elm_jax.infer``), so both share this one definition of the block.
        """
        with jax.named_scope("attention"):  # names the ops in XLA's dumps (elm-plan's buffers)
            x = constrain(x + attend(self.attn_norm(x)).astype(x.dtype), RESIDUAL)
        with jax.named_scope("ffn"):
            return constrain(x + self.ffn(self.ffn_norm(x)).astype(x.dtype), RESIDUAL)


def _run_layer(layer: DecoderLayer, x: jax.Array, positions: jax.Array,
               segment_ids: jax.Array | None) -> jax.Array:
    return layer(x, positions, segment_ids)


class OpenELM(nnx.Module):
    """tokens ``[batch, seq]`` -> float32 logits ``[batch, seq, vocab]`` (tied embeddings)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        param_dtype = jnp.dtype(cfg.param_dtype)
        self.embed = param(rngs, normal(cfg.model_dim ** -0.5), (cfg.vocab_size, cfg.model_dim),
                           param_dtype, ("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.model_dim, eps=cfg.norm_eps, param_dtype=param_dtype, rngs=rngs)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        # Pinned: left alone, the compiler propagates the table's sharding ("embed" over fsdp)
        # into the residual stream and, under FSDP, computes every layer for the whole batch.
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.dtype(self.cfg.dtype))
        return constrain(x, RESIDUAL)

    def output_embedding(self) -> jax.Array:
        """The tied output projection ``[vocab, d]`` in the compute dtype."""
        return self.embed[...].astype(jnp.dtype(self.cfg.dtype))

    def final_norm(self, x: jax.Array) -> jax.Array:
        """The last residual stream, normed, in the compute dtype: what the logits are made of."""
        return self.norm(x).astype(jnp.dtype(self.cfg.dtype))

    def logits(self, x: jax.Array) -> jax.Array:
        """Final norm, then the tied output projection, accumulated and returned in float32."""
        logits = jnp.einsum("bsd,vd->bsv", self.final_norm(x), self.output_embedding(),
                            preferred_element_type=jnp.float32)
        return constrain(logits, LOGITS)

    def hidden_states(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None) -> jax.Array:
        """The residual stream after the last layer ``[batch, seq, d]`` (before the final norm)."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.embed_tokens(tokens)
        for index, layer in enumerate(self.layers):
            policy = self.cfg.remat_for_layer(index)
            with jax.named_scope(f"layer_{index}"):
                if policy == "none":
                    x = layer(x, positions, segment_ids)
                else:
                    run = nnx.remat(_run_layer, policy=CHECKPOINT_POLICIES[policy])
                    x = run(layer, x, positions, segment_ids)
        return x

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """``positions`` default to 0..seq-1; ``segment_ids`` confine attention to a document."""
        return self.logits(self.hidden_states(tokens, positions=positions,
                                              segment_ids=segment_ids))


def build(cfg: ModelConfig, seed: int = 0) -> OpenELM:
    """A freshly initialised model (CoreNet initialisation)."""
    return OpenELM(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> OpenELM:
    """The model with ``ShapeDtypeStruct`` leaves: shapes without memory."""
    return nnx.eval_shape(lambda: build(cfg))


def abstract_params(cfg: ModelConfig) -> nnx.State:
    """The parameter state as ``ShapeDtypeStruct`` variables carrying their ``logical_axes``
    (what ``elm_jax.parallel.mesh.param_shardings`` reads)."""
    return nnx.state(abstract_model(cfg), nnx.Param)


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters (tied embedding counted once), without allocating any."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_params(cfg)))


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = True) -> float:
    """Model FLOPs per token: 2 per multiply-add of every matmul, attention included.

    Attention scores and values are counted for the causal half (``seq_len / 2`` keys per query
    on average), the convention the attention benchmark uses too. Training is 3x forward.
    """
    d, h = cfg.model_dim, cfg.head_dim
    forward = 2 * cfg.vocab_size * d  # tied output projection
    for shape in cfg.layer_shapes():
        qkv = d * (shape.q_heads + 2 * shape.kv_heads) * h
        out = shape.q_heads * h * d
        ffn = 3 * d * shape.ffn_dim
        attn = 2 * shape.q_heads * h * seq_len / 2  # QK^T and AV over the causal half
        forward += 2 * (qkv + out + ffn) + 2 * attn
    return float(forward * (3 if training else 1))
