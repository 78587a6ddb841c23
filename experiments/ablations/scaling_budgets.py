"""Loss against compute across a few tiny budgets: the layer-wise ablation's model at four widths.

    elm-sweep --sweep experiments/ablations/scaling_budgets.py --dry-run
    elm-sweep --sweep experiments/ablations/scaling_budgets.py      # ~1 hour on 2 CPU cores

notebooks/scaling_fit.py fits L(C) = A C^-alpha + E to the final validation losses.
"""

from pathlib import Path

import ml_collections

from elm_jax.explore.sweep import load_config_file


def get_config(arg=None):
    del arg
    sweep = ml_collections.ConfigDict()
    sweep.name = "scaling_budgets"
    sweep.description = __doc__.split("\n\n")[0]
    sweep.base = load_config_file(str(Path(__file__).with_name("layerwise_vs_uniform.py"))).base
    sweep.base.name = "scaling_budgets"
    sweep.axes = [
        {"field": "model.model_dim", "values": [32, 64, 96, 128]},  # head_dim 8: 4 to 8 heads at 64
        {"field": "train.seed", "values": [0, 1]},
    ]
    return sweep
