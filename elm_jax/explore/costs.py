"""Exact per-layer costs of a model config: parameters, FLOPs, KV cache and activation memory.

Pure arithmetic on the layer shapes, so a 3B schedule is costed in microseconds and without jax.
Conventions (the same as ``elm_jax.model.flops_per_token`` and the attention benchmark):

- FLOPs are 2 per multiply-add; attention scores and values count the causal half (``seq_len / 2``
  keys per query on average); a training step is 3x the forward pass.
- KV-cache bytes per token: K and V of every layer in the cache dtype.
- Activation bytes per token: what JAX's autodiff keeps for the backward pass of each layer under
  its remat policy, as the model is written today with the XLA attention (which keeps the
  ``[heads, seq]`` softmax; the flash kernels keep no such term). ``tests/explore`` checks these
  numbers against ``jax.ad_checkpoint``'s own list of saved residuals. XLA may fuse or rematerialise
  some of them afterwards, so for ``none`` this is an upper bound of what the compiled step holds.
"""

from __future__ import annotations

import dataclasses

from elm_jax.common_types import REMAT_POLICIES
from elm_jax.config import ModelConfig
from elm_jax.errors import ConfigError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CONVENTIONS = ("total", "non_embedding")  # parameters with or without the tied embedding
COSTS = ("params", "flops", "kv_bytes")


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One layer's shapes and costs (per token where it says so)."""

    index: int
    q_heads: int
    kv_heads: int
    ffn_dim: int
    attention_params: int  # q, k, v, out projections and the q/k norm weights
    ffn_params: int
    norm_params: int  # the two pre-norms
    projection_flops: float  # forward, per token: q/k/v/out projections
    score_flops: float  # forward, per token: QK^T and AV over the causal half of seq_len
    ffn_flops: float  # forward, per token
    kv_bytes: int  # per token
    activation_bytes: int  # per token, under ``remat_policy``
    remat_policy: str
    tp_divides: bool  # q heads, kv heads and FFN width all divide the tensor-parallel axis

    @property
    def params(self) -> int:
        return self.attention_params + self.ffn_params + self.norm_params

    @property
    def flops(self) -> float:
        return self.projection_flops + self.score_flops + self.ffn_flops


@dataclasses.dataclass(frozen=True)
class ModelCosts:
    """All layers plus what lies outside them (tied embedding, final norm, output projection)."""

    layers: tuple[LayerCost, ...]
    embedding_params: int
    final_norm_params: int
    head_flops: float  # forward, per token: the tied output projection
    logits_bytes: int  # per token: the float32 logits the loss keeps for the backward pass
    seq_len: int
    tensor_parallel: int

    def params(self, convention: str = "total") -> int:
        """``total`` counts the tied embedding once; ``non_embedding`` leaves it out."""
        check_convention(convention)
        layers = sum(layer.params for layer in self.layers) + self.final_norm_params
        return layers + (self.embedding_params if convention == "total" else 0)

    def flops_per_token(self, *, training: bool = True) -> float:
        forward = self.head_flops + sum(layer.flops for layer in self.layers)
        return forward * (3 if training else 1)

    @property
    def kv_bytes_per_token(self) -> int:
        return sum(layer.kv_bytes for layer in self.layers)

    @property
    def activation_bytes_per_token(self) -> int:
        return sum(layer.activation_bytes for layer in self.layers) + self.logits_bytes

    @property
    def tp_divides(self) -> bool:
        return all(layer.tp_divides for layer in self.layers)

    def value(self, cost: str, convention: str = "total") -> float:
        """One headline number: ``params`` (in ``convention``), training ``flops`` per token, or
        ``kv_bytes`` per token."""
        if cost == "params":
            return float(self.params(convention))
        if cost == "flops":
            return self.flops_per_token()
        if cost == "kv_bytes":
            return float(self.kv_bytes_per_token)
        raise ConfigError(f"cost {cost!r} is unknown; choose one of {', '.join(COSTS)}")


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConfigError(f"parameter convention {convention!r} is unknown; choose one of "
                          f"{', '.join(CONVENTIONS)}")


def activation_bytes(*, policy: str, model_dim: int, head_dim: int, q_heads: int, kv_heads: int,
                     ffn_dim: int, seq_len: int, compute_bytes: int) -> int:
    """Bytes per token one layer keeps for its backward pass under remat ``policy`` (see module doc).

    Float32 terms are the norms' statistics and upcasts, the softmax and the attention matmuls
    (accumulated in float32); the rest is in the compute dtype (``compute_bytes``).
    """
    d, h, q, k, f, s, c = model_dim, head_dim, q_heads, kv_heads, ffn_dim, seq_len, compute_bytes
    layer_input = d * c
    if policy == "full":
        return layer_input
    if policy == "save_attention_out":
        return layer_input + q * h * c
    projections = (q + 2 * k) * h * c + d * c + 2 * f * c  # q/k/v, out_proj, gate and up outputs
    if policy == "dots_no_batch":
        return layer_input + projections
    if policy == "dots":
        return layer_input + projections + q * s * 4 + q * h * 4  # + scores and attended values
    if policy != "none":
        raise ConfigError(f"remat policy {policy!r} is unknown; choose one of {', '.join(REMAT_POLICIES)}")
    norm = 2 * 4 + 2 * d * c  # rsqrt statistics, normalised input, times the weight
    return (d * 4 + norm  # attention pre-norm; its float32 input stands in for the layer input
            + (q + k) * h * 4 + k * h * c  # q and k (float32 for their norms), v
            + 2 * h * 4  # RoPE cos and sin
            + 2 * 4 * (q + k) + (q + k) * h * c  # q/k norm statistics and outputs
            + (q + k) * h * c  # q and k after RoPE
            + q * s * (1 + 4 + 4 + c) + 2 * 4 * q  # mask, masked logits, exp, probabilities, sums
            + q * h * c  # attention output
            + d * 4 + norm  # FFN pre-norm (its float32 input is the residual after attention)
            + 6 * f * c)  # gate, up, three SiLU intermediates, their product


def model_costs(model: ModelConfig, *, seq_len: int, remat_policy: str | None = None,
                kv_dtype: str | None = None, tensor_parallel: int = 1) -> ModelCosts:
    """Costs of every layer of ``model`` at sequence length ``seq_len``.

    ``remat_policy`` None uses the model's own per-layer policy; ``kv_dtype`` None the compute
    dtype; ``tensor_parallel`` is the size of the axis heads and FFN width are split over.
    """
    if seq_len <= 0 or tensor_parallel <= 0:
        raise ConfigError(f"seq_len ({seq_len}) and tensor_parallel ({tensor_parallel}) must be positive")
    d, h = model.model_dim, model.head_dim
    compute = BYTES[model.dtype]
    if (kv_dtype or model.dtype) not in BYTES:
        raise ConfigError(f"kv_dtype {kv_dtype!r} is unknown; choose one of {', '.join(BYTES)}")
    kv = BYTES[kv_dtype or model.dtype]
    layers = []
    for i, shape in enumerate(model.layer_shapes()):
        q, k, f = shape.q_heads, shape.kv_heads, shape.ffn_dim
        policy = remat_policy or model.remat_for_layer(i)
        layers.append(LayerCost(
            index=i, q_heads=q, kv_heads=k, ffn_dim=f,
            attention_params=d * h * (2 * q + 2 * k) + 2 * h, ffn_params=3 * d * f, norm_params=2 * d,
            projection_flops=2.0 * d * h * (2 * q + 2 * k), score_flops=2.0 * q * h * seq_len,
            ffn_flops=6.0 * d * f, kv_bytes=2 * k * h * kv,
            activation_bytes=activation_bytes(policy=policy, model_dim=d, head_dim=h, q_heads=q,
                                              kv_heads=k, ffn_dim=f, seq_len=seq_len,
                                              compute_bytes=compute),
            remat_policy=policy,
            tp_divides=all(n % tensor_parallel == 0 for n in (q, k, f))))
    return ModelCosts(layers=tuple(layers), embedding_params=model.vocab_size * d, final_norm_params=d,
                      head_flops=2.0 * model.vocab_size * d, logits_bytes=4 * model.vocab_size,
                      seq_len=seq_len, tensor_parallel=tensor_parallel)


def cost_table(costs: ModelCosts) -> list[dict[str, float | int | str | bool]]:
    """One plain dict per layer (for printing, CSV or a DataFrame)."""
    keys = ("q_heads", "kv_heads", "ffn_dim", "params", "flops", "kv_bytes", "activation_bytes",
            "remat_policy", "tp_divides")
    return [{"layer": layer.index, **{key: getattr(layer, key) for key in keys}} for layer in costs.layers]


def relative_mismatch(value: float, reference: float) -> float:
    """``value / reference - 1`` (0 when both are 0)."""
    return 0.0 if reference == 0 else value / reference - 1

