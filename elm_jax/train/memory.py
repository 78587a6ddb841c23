"""How much memory one device needs for a train step, from the config and shardings alone.

``memory_bound`` adds up what the step holds at its peak if it keeps what it lays out: the parameters
and optimizer state (as sharded), one set of float32 gradients, the activations the remat policy
keeps for the backward pass, and the larger of two working sets (the loss: one chunk of float32
logits and their gradient; the backward of the largest layer: its recomputed activations, the
gradients of its FFN or attention and, under FSDP, its gathered weights). It is an account to set
XLA's temporaries against (``elm-plan`` prints the ratio), so a step that needs far more than its
floor shows where to look; not a strict lower bound of XLA's "temporaries": XLA may keep less
where it recomputes elementwise results inside its fusions or writes a result into an output
buffer (the tiny step on v5e-1, remat ``none``, has 0.83x this floor; the paper sizes 1.1-1.9x).

Per token and layer, with d the model width, q / kv the query / key-value widths (heads x head_dim)
and f the FFN width, each divided by the tensor axis when it shards them, the activations kept are
(compute dtype):

- ``full``: the layer's input, d;
- ``save_attention_out``: d + q;
- ``dots`` / ``dots_no_batch``: d + (q + 2 kv) + d + 2 f + d (input and every projection's output);
- ``none``: d + 3 d + 2 q + 2 kv + 3 f (normed inputs, q, k, v, attention output, mid-layer
  residual, gate, up and their product).

The backward of a layer holds, whatever was kept, max(4 f + 2 d, 4 q + 4 kv + 2 d) per token: in the
FFN gate, up, the gradient of their product and of one of them, the normed input and the incoming
gradient; in attention q, k, v, the output and their gradients.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from elm_jax.config import Config
from elm_jax.train.loss import chunk_count


@dataclasses.dataclass(frozen=True)
class Term:
    """One part of the bound: bytes per device and how they were counted."""

    name: str
    bytes: int
    how: str


@dataclasses.dataclass(frozen=True)
class MemoryBound:
    """Per-device floor of a train step: what it holds across steps and what it needs in between."""

    held: tuple[Term, ...]  # arguments: parameters, optimizer state, batch
    temporaries: tuple[Term, ...]  # gradients, kept activations, the larger working set

    @property
    def held_bytes(self) -> int:
        return sum(t.bytes for t in self.held)

    @property
    def temp_bytes(self) -> int:
        return sum(t.bytes for t in self.temporaries)

    @property
    def total_bytes(self) -> int:
        return self.held_bytes + self.temp_bytes


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of abstract arrays with shardings (the largest shard if uneven)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


@dataclasses.dataclass(frozen=True)
class _Widths:
    """Per-device widths of one layer's activations (tensor-sharded dimensions divided)."""

    d: int
    q: int
    kv: int
    f: int
    q_heads: int

    def kept(self, policy: str) -> int:
        """Elements per token a layer keeps for its backward under ``policy``."""
        if policy == "full":
            return self.d
        if policy == "save_attention_out":
            return self.d + self.q
        if policy in ("dots", "dots_no_batch"):
            return 3 * self.d + self.q + 2 * self.kv + 2 * self.f + self.d
        return self.d + self.recomputed()

    def recomputed(self) -> int:
        """Elements per token of a layer's whole forward (what ``none`` keeps)."""
        return 3 * self.d + 2 * self.q + 2 * self.kv + 3 * self.f

    def backward(self) -> int:
        """Elements per token the backward of a layer holds at once, whatever it kept: in the FFN
        gate, up, the gradient of their product and of one of them, with the normed input and the
        incoming gradient; in attention q, k, v, the output and their four gradients."""
        return max(4 * self.f + 2 * self.d, 4 * self.q + 4 * self.kv + 2 * self.d)


def _layer_widths(config: Config, tensor: int) -> list[_Widths]:
    cfg = config.model

    def split(n: int) -> int:
        return n // tensor if n % tensor == 0 else n

    out = []
    for shape in cfg.layer_shapes():
        heads_split = shape.q_heads % tensor == 0 and shape.kv_heads % tensor == 0
        q_heads = shape.q_heads // tensor if heads_split else shape.q_heads
        kv_heads = shape.kv_heads // tensor if heads_split else shape.kv_heads
        out.append(_Widths(cfg.model_dim, q_heads * cfg.head_dim, kv_heads * cfg.head_dim,
                           split(shape.ffn_dim), q_heads))
    return out


def _gathered_layer_bytes(layer_params: Any, dtype_bytes: int) -> int:
    """One layer's weights in the compute dtype as FSDP gathers them (tensor sharding kept)."""
    total = 0
    for leaf in jax.tree.leaves(layer_params):
        spec = getattr(getattr(leaf, "sharding", None), "spec", ())
        tensor = 1
        for axes in spec:
            if "tensor" in (axes if isinstance(axes, tuple) else (axes,)):
                tensor = leaf.sharding.mesh.shape["tensor"]
        total += math.prod(leaf.shape) // tensor * dtype_bytes
    return total


def memory_bound(config: Config, mesh_shape: dict[str, int], state_shapes: Any, batch_shapes: Any,
                 microbatches: int, attention_impl: str = "pallas") -> MemoryBound:
    """The per-device floor of ``config``'s train step on a mesh of ``mesh_shape``.

    ``state_shapes`` / ``batch_shapes``: the step's abstract state and batch with their shardings
    (``TrainStep.state_shapes``); ``attention_impl``: what attention compiles to ("xla" keeps the
    [heads, seq, seq] scores, the kernels do not).
    """
    cfg, train = config.model, config.train
    compute = np.dtype(cfg.dtype).itemsize
    batch_shards = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    tensor = mesh_shape.get("tensor", 1)
    rows = train.batch_size // (batch_shards * microbatches)
    seq = config.data.seq_len
    tokens = rows * seq
    vocab = cfg.vocab_size // tensor if cfg.vocab_size % tensor == 0 else cfg.vocab_size
    widths = _layer_widths(config, tensor)
    policies = [cfg.remat_for_layer(i) for i in range(cfg.num_layers)]

    params = shard_bytes(state_shapes.params)
    held = (Term("parameters", params, f"{cfg.param_dtype}, as sharded"),
            Term("optimizer state", shard_bytes(state_shapes.opt_state), "Adam moments, as sharded"),
            Term("batch", shard_bytes(batch_shapes), f"{rows * microbatches} rows x {seq}"))

    kept = sum(w.kept(p) for w, p in zip(widths, policies)) + cfg.model_dim  # + last layer's output
    activations = Term("activations kept for the backward", tokens * kept * compute,
                       f"{tokens} tokens x {kept} values ({', '.join(sorted(set(policies)))} remat)")

    chunks = chunk_count(seq, train.loss_chunk)
    logit_tokens = tokens // chunks
    loss = Term("loss working set", 2 * logit_tokens * vocab * 4 + tokens * cfg.model_dim * compute,
                f"float32 logits and their gradient for {logit_tokens} tokens x {vocab} "
                f"({chunks} chunk(s)), and the gradient for the final hidden states")

    def layer_set(i: int) -> int:
        total = tokens * widths[i].backward() * compute
        if attention_impl == "xla":
            total += rows * widths[i].q_heads * seq * seq * 4  # float32 scores of the plain attention
        if mesh_shape.get("fsdp", 1) > 1:  # the gathered weights and their unreduced gradient
            total += 2 * _gathered_layer_bytes(state_shapes.params["layers"][i], compute)
        return total

    largest = max(range(cfg.num_layers), key=layer_set)
    layer = Term("largest layer's backward working set", layer_set(largest),
                 f"layer {largest}: FFN or attention activations and their gradients"
                 + (", gathered weights" if mesh_shape.get("fsdp", 1) > 1 else ""))
    temporaries = (Term("gradients", params * 4 // np.dtype(cfg.param_dtype).itemsize,
                        "float32, sharded like the parameters"),
                   activations, max(loss, layer, key=lambda t: t.bytes))
    return MemoryBound(held, temporaries)
