"""``elm-sweep``: run a grid of experiments (schedules x seeds x ...) and compare them.

    elm-sweep --sweep experiments/ablations/layerwise_vs_uniform.py --dry-run   # grid, costs, check
    elm-sweep --sweep experiments/ablations/layerwise_vs_uniform.py             # run here, resumable
    elm-sweep --sweep S.py --launch slurm --dry-run -- --nodes 1 --gpus-per-node 8 --partition gpu

Cells run one after another into ``<out>/<cell>-<config hash>``; rerunning skips finished cells and
resumes the one that was cut off. With ``--launch`` each cell goes to a launcher of ``launch/``
(arguments after ``--`` are the launcher's). ``results.csv`` and ``results.md`` in ``--out`` are
rebuilt from the run directories at the end (``--collect`` only rebuilds them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from elm_jax.cli import common
from elm_jax.errors import UsageError
from elm_jax.explore import results as results_lib
from elm_jax.explore import runner
from elm_jax.explore.costs import model_costs
from elm_jax.explore.sweep import Cell, Sweep, cell_costs, expand, parse_sweep, status
from elm_jax.rundir import write_atomic

SWEEP = config_flags.DEFINE_config_file("sweep", None, "sweep file: path.py or path.py:arg",
                                        lock_config=True)
OUT = flags.DEFINE_string("out", None, "output directory (default: runs/sweeps/<sweep name>)")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the grid (and launcher commands), run nothing")
COLLECT = flags.DEFINE_bool("collect", False, "only rebuild results.csv / results.md from the run dirs")
COMPILATION_CACHE = flags.DEFINE_bool("compilation_cache", True, "keep compiled steps in "
                                      "<out>/jax_cache so cells of equal shapes compile once")
LAUNCH = flags.DEFINE_enum("launch", None, ["tpu_vm", "slurm", "ssh"],
                           "hand each cell to this launcher (its flags after --) instead of running here")
common.hyphen_aliases(DRY_RUN)

HIDDEN_DIFFERENCES = ("name", "train.run_dir")  # differ in every cell by construction
PLOT = "val_loss_vs_tokens.png"


def _sweep() -> Sweep:
    if SWEEP.value is None:
        raise UsageError("no --sweep given; pass --sweep experiments/ablations/<file>.py")
    return parse_sweep(SWEEP.value, config_flags.get_config_filename(flags.FLAGS["sweep"]))


def _value(value) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
        if isinstance(value, (list, tuple)) else str(value)


def print_grid(sweep: Sweep, cells: list[Cell]) -> None:
    """Per cell: parameters, FLOPs/token, status and the fields that differ from the base."""
    match = sweep.match
    print(f"sweep {sweep.name}: {len(cells)} cells ({' x '.join(a.field for a in sweep.axes)})"
          + (f"; matching {match['cost']} ({match['convention']}) to the base within "
             f"{float(match['tolerance']):.2%} by {match['knob']}" if match else ""))
    base = model_costs(sweep.base.model, seq_len=sweep.base.data.seq_len)
    convention = match["convention"] if match else "total"
    print(f"base: {base.params('total'):,} parameters ({base.params('non_embedding'):,} without the "
          f"embedding), {base.flops_per_token() / 1e6:.2f} MFLOP/token (training)")
    width = max(len(c.name) for c in cells)
    print(f"{'cell':<{width}}  {'params':>11}  {'vs base':>8}  {'MFLOP/tok':>9}  {'status':<7}  "
          "differs from base")
    total_tokens = total_flops = 0.0
    for cell in cells:
        costs = cell_costs(cell)
        key = "non_embedding_params" if convention == "non_embedding" else "params"
        versus = costs[key] / base.params(convention) - 1
        differs = " ".join(f"{k}={_value(v)}" for k, (_, v) in sorted(cell.differs.items())
                           if k not in HIDDEN_DIFFERENCES)
        print(f"{cell.name:<{width}}  {costs['params']:>11,}  {versus:>+8.2%}  "
              f"{costs['flops_per_token'] / 1e6:>9.3f}  {status(cell):<7}  {differs or '(the base)'}")
        total_tokens += cell.tokens
        total_flops += cell.tokens * costs["flops_per_token"]
    print(f"total: {total_tokens:,.0f} tokens, {total_flops:.3g} training FLOPs; only swept fields "
          "differ from the base (checked)")


def write_results(sweep: Sweep, cells: list[Cell], out: str) -> None:
    rows = results_lib.collect(sweep, cells)
    groups = results_lib.grouped(sweep, rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out) / "results.csv", results_lib.to_csv(rows))
    write_atomic(Path(out) / "results.md", results_lib.to_markdown(sweep, rows, groups))
    print(f"results: {Path(out) / 'results.csv'}, {Path(out) / 'results.md'}")
    write_plot(sweep, cells, Path(out) / PLOT)


def write_plot(sweep: Sweep, cells: list[Cell], path) -> None:
    """Validation loss against tokens, mean and standard deviation of each group (needs the
    ``notebooks`` extra for matplotlib; without it the tables are still written)."""
    try:
        import matplotlib
    except ImportError:
        print("note: pip install 'elm_jax[notebooks]' for the loss plot")
        return
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from elm_jax.explore import plots

    curves = results_lib.group_curves(sweep, cells)
    if not curves:
        return
    ax = plots.plot_curves(curves, xlabel="training tokens", ylabel="validation loss (nats)")
    ax.set_title(f"{sweep.name}: mean ± std over {sweep.pair_by or 'runs'}")
    tmp = path.with_name(f".{path.name}.tmp.png")
    ax.figure.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    os.replace(tmp, path)
    print(f"plot: {path}")


def run_here(cells: list[Cell], out: str) -> bool:
    """Train the cells one after another; False when a SIGTERM stopped the sweep (rerun resumes)."""
    if COMPILATION_CACHE.value:
        runner.use_compilation_cache(f"{out}/jax_cache")
    quiet = not flags.FLAGS["verbosity"].present
    return runner.run_locally(cells, say=lambda s: print(s, flush=True), quiet=quiet)


def launch_all(sweep: Sweep, cells: list[Cell], launcher_args: list[str]) -> None:
    if config_flags.get_override_values(flags.FLAGS["sweep"]):
        raise UsageError("--sweep.* overrides cannot travel to launched cells (they rebuild "
                               "the cell from the sweep file); edit and commit the sweep file")
    code = runner.launch(sweep, cells, LAUNCH.value, launcher_args, dry_run=DRY_RUN.value, say=print)
    if code:
        sys.exit(code)


def _main(argv: list[str]) -> None:
    launcher_args = argv[1:]
    if launcher_args and not LAUNCH.value:
        raise UsageError(f"unexpected arguments {launcher_args}; launcher flags (after --) need "
                               "--launch tpu_vm|slurm|ssh")
    sweep = _sweep()
    out = OUT.value or f"runs/sweeps/{sweep.name}"
    cells = expand(sweep, out)
    if not COLLECT.value:
        print_grid(sweep, cells)
    if LAUNCH.value:
        launch_all(sweep, cells, launcher_args)
    elif COLLECT.value or not DRY_RUN.value and run_here(cells, out):
        write_results(sweep, cells, out)


main = common.entry(_main, stops_cleanly=True)

if __name__ == "__main__":
    main()
