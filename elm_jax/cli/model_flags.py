"""The flags of the commands that open a trained model (``elm-generate``, ``elm-eval``), defined once.

``--checkpoint`` (an elm-train run directory or an HF OpenELM directory), ``--adapter`` (what an
elm-finetune run trained, folded into the checkpoint, its base), ``--tokenizer``, ``--dtype`` and
``--tensor_parallel``; ``open_model()`` reads them and returns the model placed on an inference
mesh, with its tokenizer. For a run directory it prints one line on stderr naming the step it
loaded and any newer step it skipped and why (stdout stays the command's answer).

Like ``elm-train`` these commands run on several processes (a model too big for one host, or one
process per GPU): ``open_model()`` first joins the run from ``--distributed`` /
``--coordinator_address`` / ``--num_processes`` / ``--process_id`` or, when those are unset, the
environment (``ELM_*`` variables, SLURM, TPU VM; ``elm_jax.parallel.distributed``). Every process
computes; only process 0 (``lead()``) prints and writes results.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
from absl import flags

from elm_jax.cli import common
from elm_jax.common_types import DISTRIBUTED_MODES, DTYPES
from elm_jax.config import DistributedConfig
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.finetune.export import apply_adapter
from elm_jax.infer.loading import Loaded, inference_mesh, load_checkpoint, load_tokenizer
from elm_jax.parallel import distributed

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "elm-train run directory or HF OpenELM "
                                 "directory", required=True)
ADAPTER = flags.DEFINE_string("adapter", None, "an elm-finetune adapter directory "
                              "(run_dir/adapter-step<N>) to fold into --checkpoint, its base model")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "SentencePiece tokenizer.model (default: the "
                                "one in the checkpoint directory)")
DTYPE = flags.DEFINE_enum("dtype", None, list(DTYPES), "compute dtype (default: the checkpoint's)")
TENSOR = flags.DEFINE_integer("tensor_parallel", 1, "devices that split each layer's heads and "
                             "FFN (the rest split the batch)", lower_bound=1)
DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", list(DISTRIBUTED_MODES), "how this "
                                "process joins a multi-process run (auto: the flags below, else "
                                "ELM_* variables, else SLURM, else a TPU VM, else alone)")
COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (default: "
                                  "$ELM_COORDINATOR_ADDRESS)")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "processes in the run (default: "
                                     "$ELM_NUM_PROCESSES)", lower_bound=0)
PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process, 0..N-1 (default: "
                                  "$ELM_PROCESS_ID)", lower_bound=-1)
common.hyphen_aliases(TENSOR, COORDINATOR, NUM_PROCESSES, PROCESS_ID)


def join_run() -> distributed.Launch:
    """Join the multi-process run this process belongs to, if any (before any jax array)."""
    cfg = DistributedConfig(mode=DISTRIBUTED.value, coordinator_address=COORDINATOR.value,
                            num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value)
    cfg.validate()
    return distributed.initialize(cfg)


def lead() -> bool:
    """Whether this process prints and writes the results (process 0 of a multi-process run)."""
    return jax.process_index() == 0


@dataclasses.dataclass
class Opened:
    """A model ready to serve: where it lives, and the mesh to run it under."""

    loaded: Loaded
    mesh: jax.sharding.Mesh

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.loaded, TOKENIZER.value)


def open_model() -> Opened:
    """The ``--checkpoint`` model on an inference mesh of ``--tensor_parallel`` tensor devices
    (after joining the multi-process run, if any: ``join_run``)."""
    join_run()
    mesh = inference_mesh(TENSOR.value)
    loaded = load_checkpoint(CHECKPOINT.value, dtype=DTYPE.value, mesh=mesh)
    if loaded.report and lead():
        print(loaded.report, file=sys.stderr, flush=True)
    if ADAPTER.value:
        loaded = dataclasses.replace(loaded, model=apply_adapter(loaded.model, ADAPTER.value))
    return Opened(loaded, mesh)
