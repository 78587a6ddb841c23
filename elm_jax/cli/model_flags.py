"""The flags of the commands that open a trained model (``elm-generate``, ``elm-eval``), defined once.

``--checkpoint`` (an elm-train run directory or an HF OpenELM directory), ``--adapter`` (what an
elm-finetune run trained, folded into the checkpoint, its base), ``--tokenizer``, ``--dtype`` and
``--tensor_parallel``; ``open_model()`` reads them and returns the model placed on an inference
mesh, with its tokenizer.
"""

from __future__ import annotations

import dataclasses

import jax
from absl import flags

from elm_jax.cli import common
from elm_jax.common_types import DTYPES
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.finetune.export import apply_adapter
from elm_jax.infer.loading import Loaded, inference_mesh, load_checkpoint, load_tokenizer

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "elm-train run directory or HF OpenELM "
                                 "directory", required=True)
ADAPTER = flags.DEFINE_string("adapter", None, "an elm-finetune adapter directory "
                              "(run_dir/adapter-step<N>) to fold into --checkpoint, its base model")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "SentencePiece tokenizer.model (default: the "
                                "one in the checkpoint directory)")
DTYPE = flags.DEFINE_enum("dtype", None, list(DTYPES), "compute dtype (default: the checkpoint's)")
TENSOR = flags.DEFINE_integer("tensor_parallel", 1, "devices that split each layer's heads and "
                             "FFN (the rest split the batch)", lower_bound=1)
common.hyphen_aliases(TENSOR)


@dataclasses.dataclass
class Opened:
    """A model ready to serve: where it lives, and the mesh to run it under."""

    loaded: Loaded
    mesh: jax.sharding.Mesh

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.loaded, TOKENIZER.value)


def open_model() -> Opened:
    """The ``--checkpoint`` model on an inference mesh of ``--tensor_parallel`` tensor devices."""
    mesh = inference_mesh(TENSOR.value)
    loaded = load_checkpoint(CHECKPOINT.value, dtype=DTYPE.value, mesh=mesh)
    if ADAPTER.value:
        loaded = dataclasses.replace(loaded, model=apply_adapter(loaded.model, ADAPTER.value))
    return Opened(loaded, mesh)
