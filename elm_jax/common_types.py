"""Names shared across the package, each defined here once (floor 0: imports nothing from elm_jax).

Mesh and logical axis names, the batch field contract between the data pipeline and the train step,
the choices config fields accept, the data-source schema, run-directory file names, and the chips'
peak FLOP/s. Modules read these names from here rather than keeping copies that could disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# ----------------------------------------------------------------------------- mesh and sharding
AXES = ("data", "fsdp", "tensor")  # the device mesh, outermost first
BATCH_AXES = ("data", "fsdp")  # the axes that split the rows of a batch
TENSOR_AXIS = "tensor"

Rules = Mapping[str, tuple[str, ...] | None]

# logical axis -> mesh axes (None: replicated). "batch" is the leading dimension of every input.
DEFAULT_RULES: Rules = {
    # parameters
    "batch": BATCH_AXES,
    "vocab": (TENSOR_AXIS,),
    "embed": ("fsdp",),
    "heads": (TENSOR_AXIS,),
    "kv_heads": (TENSOR_AXIS,),
    "mlp": (TENSOR_AXIS,),
    "head_dim": None,
    "norm": None,
    # activations: batch over the data axes, the tensor-parallel dimension over "tensor", and the
    # residual stream whole in its model dimension (every layer's input and output)
    "activation_batch": BATCH_AXES,
    "activation_length": None,
    "activation_embed": None,
    "activation_heads": (TENSOR_AXIS,),
    "activation_kv_heads": (TENSOR_AXIS,),
    "activation_mlp": (TENSOR_AXIS,),
    "activation_vocab": (TENSOR_AXIS,),
}
# The head dimensions of one attention block: sharded together or not at all.
HEAD_AXES = ("heads", "kv_heads", "activation_heads", "activation_kv_heads")

# ----------------------------------------------------------------------------- the batch contract
# name -> dtype of every field of a batch the data pipeline yields; all [batch, seq_len].
BATCH_FIELDS: Mapping[str, type] = {
    "inputs": np.int32, "targets": np.int32, "loss_mask": np.float32,
    "segment_ids": np.int32, "positions": np.int32,
}

# ----------------------------------------------------------------------------- config choices
ATTENTION_IMPLS = ("auto", "xla", "pallas", "pallas_tpu", "pallas_gpu", "cudnn")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
SEQUENCE_MODES = ("pad", "pack")
NONFINITE_POLICIES = ("stop", "skip")
DISTRIBUTED_MODES = ("auto", "single", "explicit", "slurm", "tpu")
FINETUNE_METHODS = ("sft", "dpo")
ADAPTERS = ("lora", "dora", "none")  # none: full fine-tuning of finetune.trainable
DPO_LOSSES = ("sigmoid", "hinge")
# alpaca: instruction / input / output records (commonsense_170k, Alpaca); chat: message lists;
# preference: prompt / chosen / rejected (UltraFeedback); shakespeare_plays: the embedded demo
FINETUNE_FORMATS = ("alpaca", "chat", "preference", "shakespeare_plays")

# ----------------------------------------------------------------------------- data sources
DATA_SPLITS = ("train", "validation")
TEXT_UNITS = ("line", "file")
FILE_ID = "{file_id"  # a path template over numbered files: "train-{file_id:05d}-05534.parquet"
SOURCE_COMMON_KEYS = frozenset({"kind", "weight", "name"})
# kind -> (keys it takes besides the common ones, keys it requires)
SOURCE_KEYS: Mapping[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "shakespeare": (frozenset(), ()),
    "tfds": (frozenset({"dataset", "data_dir", "field", "train", "validation"}), ("dataset",)),
    "array_record": (frozenset({"train", "validation", "field", "file_ids"}), ("train",)),
    "parquet": (frozenset({"train", "validation", "field", "file_ids"}), ("train",)),
    "jsonl": (frozenset({"train", "validation", "field", "file_ids"}), ("train",)),
    "text": (frozenset({"train", "validation", "unit", "file_ids"}), ("train",)),
}
SOURCE_KINDS = tuple(SOURCE_KEYS)

# ----------------------------------------------------------------------------- run directories
CONFIG_FILE = "config.json"  # the experiment (run dirs) or the HF config (HF exports)
TOKENIZER_FILE = "tokenizer.model"
CHECKPOINTS_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
HF_EXPORT_PREFIX = "hf-step"
LOCK_FILE = "run.lock"  # who is training in this run directory (host, pid, heartbeat)
CHECKSUMS_ITEM = "checksums"  # the checkpoint item with the digest of every saved array

# ----------------------------------------------------------------------------- hardware
# Dense bf16 peak FLOP/s per chip, from the vendors' spec sheets; matched on device_kind (lower
# case). Ordered: the first matching key wins ("v5p" before "v5", "h100 pcie" before "h100").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # "TPU v5" is how jax names v5p chips
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
    ("a100", 312e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
)


def peak_flops_of(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of a chip named ``device_kind`` (jax's name), None when unknown (CPU)."""
    kind = device_kind.lower()
    return next((flops for key, flops in PEAK_FLOPS if key in kind), None)
