"""One cell of a sweep as an ordinary experiment: what ``elm-sweep --launch`` hands to launchers.

    elm-train --config experiments/sweep_cell.py:experiments/ablations/layerwise_vs_uniform.py@uniform-seed1

The cell is rebuilt from the sweep file (the same expansion and cost matching as elm-sweep), so
the launched host needs the same committed sweep file; the run directory is passed separately.
"""

from elm_jax.explore.sweep import cell_experiment


def get_config(arg=None):
    return cell_experiment(arg or "")
