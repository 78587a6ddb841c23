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
# # OpenELM's layer-wise scaling, as built
#
# The four OpenELM sizes layer by layer: what the schedule asks for, what CoreNet's rounding
# builds, and what each layer costs. Next to each, the uniform model with the same number of
# parameters (same depth, width solved), to see what layer-wise scaling trades.
# All numbers come from `elm_jax.explore` (pure arithmetic); this notebook only tabulates and plots.
# `ELM_SMOKE=1` runs the smallest size only.

# %%
import dataclasses
import os

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from elm_jax.common_types import REMAT_POLICIES
from elm_jax.config import from_config_dict
from elm_jax.explore import costs, plots, schedules, solver
from elm_jax.presets import openelm_config

# %% tags=["parameters"]
SIZES = ["270m", "450m", "1_1b", "3b"]
SEQ_LEN = 2048  # attention FLOPs and activation memory depend on it
TENSOR_PARALLEL = 4  # do the head counts and FFN widths split over a tensor axis of this size?
SMOKE = os.environ.get("ELM_SMOKE") == "1"
if SMOKE:
    SIZES = SIZES[:1]

# %%
models = {size: dataclasses.replace(from_config_dict(openelm_config(size)).model, vocab_size=32000)
          for size in SIZES}

# %% [markdown]
# ## As built
# Nominal multipliers (what the linear schedule asks for), the built heads and FFN widths, and the
# rounding error. The warnings point at staircases (few distinct head counts) and layers rounded far
# from their nominal size.

# %%
for size, model in models.items():
    built = schedules.as_built(model)
    print(f"OpenELM-{size}:")
    for warning in built.warnings:
        print("  warning:", warning)
    display(pd.DataFrame([dataclasses.asdict(row) for row in built.layers]).round(3))

# %% [markdown]
# ## Costs and the uniform model of equal parameters
# Uniform layers at the linear ranges' midpoints (0.75 d of query width, 2.25 d of FFN), with the
# model width solved so that the total parameter count matches within 1 %. The other costs show
# what changes: FLOPs per token, the KV cache, activation memory.

# %%
uniform = schedules.Schedule("uniform", (0.75,), (2.25,))
rows, matched = [], {}
for size, model in models.items():
    match = solver.match_cost(model, uniform, seq_len=SEQ_LEN, knob="model_dim", tolerance=0.01)
    matched[size] = match.model
    for label, m in ((f"{size} layer-wise", model), (f"{size} uniform d={match.model.model_dim}",
                                                     match.model)):
        c = costs.model_costs(dataclasses.replace(m, dtype="bfloat16"), seq_len=SEQ_LEN,
                              tensor_parallel=TENSOR_PARALLEL)
        row = {"model": label, "params": c.params("total"), "non-embedding": c.params("non_embedding"),
               "GFLOP/token (train)": c.flops_per_token() / 1e9,
               "KV KiB/token (bf16)": c.kv_bytes_per_token / 1024,
               f"heads split over tp={TENSOR_PARALLEL}": c.tp_divides}
        for policy in REMAT_POLICIES:
            remat = costs.model_costs(dataclasses.replace(m, dtype="bfloat16"), seq_len=SEQ_LEN,
                                      remat_policy=policy)
            row[f"act KiB/token {policy}"] = remat.activation_bytes_per_token / 1024
        rows.append(row)
display(pd.DataFrame(rows).round(3))

# %% [markdown]
# ## Shapes and cost breakdown

# %%
fig, axes = plt.subplots(1, len(SIZES), figsize=(5 * len(SIZES), 4), squeeze=False)
for ax, size in zip(axes[0], SIZES):
    plots.plot_shapes({"layer-wise": models[size], "uniform": matched[size]}, ax=ax)
    ax.set_title(f"OpenELM-{size}")
fig.tight_layout()

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
smallest = costs.model_costs(models[SIZES[0]], seq_len=SEQ_LEN)
plots.plot_cost_breakdown(smallest, what="params", ax=left)
plots.plot_cost_breakdown(smallest, what="flops", ax=right)
left.set_title(f"OpenELM-{SIZES[0]}: parameters per layer")
right.set_title(f"OpenELM-{SIZES[0]}: forward FLOPs per token per layer")
fig.tight_layout()
