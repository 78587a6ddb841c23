# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Layer-wise scaling against uniform, reverse and tapered layers at equal parameters
#
# The sweep `experiments/ablations/layerwise_vs_uniform.py`: four schedules of an 8-layer OpenELM,
# each solved to the base's non-embedding parameter count within 1 %, three seeds each, the same
# tokens in the same order. By default this notebook reads the committed run directories in
# `docs/ablations/layerwise_vs_uniform` (the numbers of docs/ABLATIONS.md); `RUN = True` trains the
# grid here first (about an hour on 2 CPU cores; `elm-sweep` does the same from the shell).
# `ELM_SMOKE=1` never trains.

# %%
import os

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from elm_jax.explore import plots, results, schedules
from elm_jax.explore.sweep import cell_costs, expand, load_config_file, parse_sweep, status

# %% tags=["parameters"]
SWEEP = "experiments/ablations/layerwise_vs_uniform.py"
RESULTS = "docs/ablations/layerwise_vs_uniform"  # committed run directories
RUN = False  # True: train unfinished cells into OUT first, then analyse OUT
OUT = "runs/sweeps/layerwise_vs_uniform"
SMOKE = os.environ.get("ELM_SMOKE") == "1"
if SMOKE:
    RUN = False

# %%
sweep = parse_sweep(load_config_file(SWEEP), SWEEP)
cells = expand(sweep, OUT if RUN else RESULTS)  # solves every schedule to the base's parameters

# %% [markdown]
# ## The grid
# Per cell: parameters, training FLOPs per token, the per-layer query heads and FFN widths, and
# whether it has run. Only the swept fields differ from the base (`expand` checks it).

# %%
grid = pd.DataFrame([{
    "cell": cell.name, **cell_costs(cell), "status": status(cell),
    "q heads": [s.q_heads for s in cell.config.model.layer_shapes()],
    "ffn": [s.ffn_dim for s in cell.config.model.layer_shapes()],
} for cell in cells])
display(grid)

# %%
if RUN:
    from elm_jax.explore import runner

    runner.use_compilation_cache(f"{OUT}/jax_cache")
    runner.run_locally(cells, say=print)

# %% [markdown]
# ## Final validation loss: by schedule over seeds, and paired against OpenELM's linear schedule

# %%
rows = results.collect(sweep, cells)
groups = results.grouped(sweep, rows)
display(pd.DataFrame([{
    "schedule": g.label, "seeds": g.summary.n, "val loss mean": g.summary.mean, "std": g.summary.std,
    "paired diff vs reference": None if g.difference is None else g.difference.mean,
    "95% bootstrap low": None if g.difference is None else g.difference.low,
    "95% bootstrap high": None if g.difference is None else g.difference.high,
} for g in groups]).round(4))

# %% [markdown]
# ## Curves and shapes

# %%
fig, (curves_ax, shapes_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
plots.plot_curves(results.group_curves(sweep, cells), xlabel="training tokens",
                  ylabel="validation loss (nats)", ax=curves_ax)
first = {}
for cell in cells:
    first.setdefault(cell.labels["schedule"], cell.config.model)
plots.plot_shapes(first, ax=shapes_ax)
shapes_ax.set_title("per-layer widths (solid: FFN, dashed: query)")
fig.tight_layout()

# %% [markdown]
# ## Rounding of each schedule

# %%
for label, model in first.items():
    for warning in schedules.as_built(model).warnings:
        print(f"{label}: {warning}")
