"""``elm-plan``: will this config's train step fit a TPU slice? Compiled ahead of time on this CPU.

    elm-plan --config experiments/openelm_3b.py --topology v5p-32
    elm-plan --config experiments/openelm_1_1b.py --topology v5e-16 --batch_search
    elm-plan --config experiments/openelm_3b.py --topology v5e-1 --verify_suggestions

Prints per-chip memory (arguments, outputs, temporaries vs HBM), an analytic floor with XLA's
temporaries against it and the largest buffers at XLA's peak, FLOPs per step and the step time at
``--mfu``. When the step does not fit, it searches microbatches and remat policy by compiling and
prints the flags that fit (``--nofit``: skip the search). Exit code 0 when the config fits as
given, 1 when it does not (with suggestions and the flags found), 2 on a user error.
"""

from __future__ import annotations

import sys

from absl import flags

from elm_jax.cli import common
from elm_jax.config import Config
from elm_jax.errors import UsageError
from elm_jax.finetune.plan import finetune_step_builder
from elm_jax.train import compile_host
from elm_jax.train import plan as plan_lib
from elm_jax.train import topology as topo_lib

CONFIG = common.define_config_flag(common.default_experiment("tiny"))
TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice by its Cloud name: v5e-8, v5p-32, v6e-8")
SLICES = flags.DEFINE_integer("slices", 1, "number of slices (data parallel over DCN)")
MFU = flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation to convert FLOPs into a step time")
HBM_FRACTION = flags.DEFINE_float("hbm_fraction", 0.95, "share of HBM the step may use")
BATCH_SEARCH = flags.DEFINE_boolean("batch_search", False,
                                    "find the largest per-chip batch that fits (several compiles)")
flags.DEFINE_alias("batch-search", "batch_search")  # the spelling in MaxText-style docs
BATCH_LIMIT = flags.DEFINE_integer("batch_limit", 1024, "largest per-chip batch --batch_search tries")
VERIFY = flags.DEFINE_boolean("verify_suggestions", False,
                              "when it does not fit, compile each suggestion until one fits")
FIT = flags.DEFINE_boolean("fit", True, "when it does not fit, search microbatches and remat policy "
                           "by compiling and print the flags that fit (--nofit: do not)")


def plan_and_report(config: Config, topology_name: str, *, slices: int = 1, mfu: float = 0.4,
                    hbm_fraction: float = 0.95, batch_search: bool = False, batch_limit: int = 1024,
                    verify: bool = False, search_fit: bool = False,
                    **plan_kwargs) -> tuple[bool, str]:
    """(fits, report text) for ``config`` on the named slice; what ``elm-plan`` prints."""
    topology = topo_lib.parse(topology_name, slices)
    kwargs = dict(hbm_fraction=hbm_fraction, **plan_kwargs)
    if batch_search:
        best, best_plan, tried = plan_lib.largest_batch(config, topology, limit=batch_limit, **kwargs)
        lines = [f"per-chip batch {t.per_chip_batch:g}: "
                 f"{'fits' if t.fits else 'does not fit'} ({t.peak_bytes / topo_lib.GIB:.2f} GiB)"
                 for t in tried]
        if best_plan is None:
            first = tried[0]
            if verify:
                first = plan_lib.verify_suggestions(first, **kwargs)
            return False, "\n".join([*lines, "not even the smallest batch fits:",
                                     plan_lib.report(first, mfu)])
        return True, "\n".join([*lines, f"largest per-chip batch that fits: {best}",
                                plan_lib.report(best_plan, mfu)])
    result = plan_lib.plan(config, topology, **kwargs)
    if not result.fits and verify:
        result = plan_lib.verify_suggestions(result, **kwargs)
    text = plan_lib.report(result, mfu)
    if not result.fits and search_fit:
        from elm_jax.train.fit import fit, fit_report

        text += "\n" + fit_report(fit(result, **kwargs))
    return result.fits, text


def _main(argv: list[str]) -> None:
    del argv
    if not TOPOLOGY.value:
        raise UsageError("--topology is required, e.g. --topology v5p-32 (see elm-plan --help)")
    if not 0 < MFU.value <= 1 or not 0 < HBM_FRACTION.value <= 1:
        raise UsageError("--mfu and --hbm_fraction are fractions in (0, 1]")
    config = common.load_config(CONFIG)
    extra = {}
    if config.finetune.base:  # a fine-tuning config: its own state (frozen base, small optimizer)
        config, extra["build_step"] = finetune_step_builder(config)
    warning = compile_host.host_memory_warning(config, compile_host.available_host_bytes())
    if warning:
        print(warning, file=sys.stderr, flush=True)
    fits, text = plan_and_report(config, TOPOLOGY.value, slices=SLICES.value, mfu=MFU.value,
                                 hbm_fraction=HBM_FRACTION.value, batch_search=BATCH_SEARCH.value,
                                 batch_limit=BATCH_LIMIT.value, verify=VERIFY.value,
                                 search_fit=FIT.value, **extra)
    print(text)
    sys.exit(0 if fits else 1)


main = common.entry(_main)

if __name__ == "__main__":
    main()
