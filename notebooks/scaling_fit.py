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
# # Loss against compute: a power-law fit with bootstrap intervals
#
# The sweep `experiments/ablations/scaling_budgets.py` trains the ablation's 8-layer model at four
# widths (two seeds each); this notebook fits `L(C) = A C^-alpha + E` to the final validation losses
# against training FLOPs, with 95 % bootstrap intervals. `RUN = True` trains the grid first (about
# an hour on 2 CPU cores). Without finished budget runs (and always with `ELM_SMOKE=1`) it fits the
# validation curves of the committed layer-wise ablation instead: points along single training
# runs, which a scaling law does not strictly describe. It shows the machinery, not a law.

# %%
import os

import numpy as np
import pandas as pd
from IPython.display import display

from elm_jax.explore import plots, results, stats
from elm_jax.explore.runs import load_run
from elm_jax.explore.sweep import expand, load_config_file, parse_sweep, status

# %% tags=["parameters"]
SWEEP = "experiments/ablations/scaling_budgets.py"
OUT = "runs/sweeps/scaling_budgets"
RUN = False  # True: train the budget grid into OUT first
FALLBACK = ("experiments/ablations/layerwise_vs_uniform.py", "docs/ablations/layerwise_vs_uniform")
SATURATING = True  # fit the irreducible loss E too
BOOTSTRAP = 1000
SMOKE = os.environ.get("ELM_SMOKE") == "1"
if SMOKE:
    RUN, BOOTSTRAP = False, 200

# %%
sweep = parse_sweep(load_config_file(SWEEP), SWEEP)
cells = expand(sweep, OUT)
if RUN:
    from elm_jax.explore import runner

    runner.use_compilation_cache(f"{OUT}/jax_cache")
    runner.run_locally(cells, say=print)
rows = [r for r in results.collect(sweep, cells) if r["status"] == "done"]

# %%
if len({r["flops"] for r in rows}) >= 3:
    source = f"final validation loss of {len(rows)} runs of {sweep.name}"
    compute = np.array([r["flops"] for r in rows])
    loss = np.array([r["val_loss"] for r in rows])
else:
    fallback = parse_sweep(load_config_file(FALLBACK[0]), FALLBACK[0])
    curves = [load_run(c.run_dir).curve("val_loss", "flops")
              for c in expand(fallback, FALLBACK[1]) if status(c) == "done"]
    source = (f"validation curves of {len(curves)} committed {fallback.name} runs (points along "
              "training, not separate budgets)")
    compute = np.concatenate([x for x, _ in curves])
    loss = np.concatenate([y for _, y in curves])
print("fitting:", source)
display(pd.DataFrame({"training FLOPs": compute, "validation loss": loss}).describe())

# %%
fit = stats.fit_power_law(compute, loss, saturating=SATURATING, samples=BOOTSTRAP)
display(pd.DataFrame([{"parameter": name, "estimate": getattr(fit, name), "95% low": low,
                       "95% high": high} for name, (low, high) in fit.intervals.items()]))

# %%
ax = plots.plot_fit(compute, loss, fit)
ax.set_title(source, fontsize="small")
