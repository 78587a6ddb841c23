"""Matplotlib figures for schedules, costs and runs (matplotlib is the ``notebooks`` extra, imported
by each function). Every function draws on ``ax`` when given, else on a new figure, and returns the
axes so notebooks can style or save it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from elm_jax.config import ModelConfig
from elm_jax.explore.costs import ModelCosts
from elm_jax.explore.runs import mean_curve
from elm_jax.explore.stats import PowerLaw


def _axes(ax: Any, size: tuple[float, float] = (6.4, 4.0)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=size).add_subplot()


def plot_curves(groups: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], *, xlabel: str,
                ylabel: str, ax: Any = None) -> Any:
    """Each group's mean curve over its runs, with a band of one standard deviation."""
    ax = _axes(ax)
    for label, curves in groups.items():
        x, mean, std = mean_curve(curves)
        (line,) = ax.plot(x, mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_shapes(models: Mapping[str, ModelConfig], *, ax: Any = None) -> Any:
    """Per layer: query width (heads x head_dim) and FFN width, as multiples of the model width."""
    ax = _axes(ax)
    for label, model in models.items():
        shapes = model.layer_shapes()
        layers = np.arange(len(shapes))
        (line,) = ax.plot(layers, [s.ffn_dim / model.model_dim for s in shapes], marker="o",
                          label=f"{label}: FFN")
        ax.step(layers, [s.q_heads * model.head_dim / model.model_dim for s in shapes], where="mid",
                linestyle="--", color=line.get_color(), label=f"{label}: query")
    ax.set_xlabel("layer")
    ax.set_ylabel("width / model_dim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_cost_breakdown(costs: ModelCosts, *, what: str = "params", ax: Any = None) -> Any:
    """Stacked per-layer bars: attention and FFN parameters, or forward FLOPs per token
    (projections, attention scores at the costed sequence length, FFN)."""
    ax = _axes(ax)
    layers = np.arange(len(costs.layers))
    if what == "params":
        parts = {"attention": [c.attention_params for c in costs.layers],
                 "FFN": [c.ffn_params for c in costs.layers]}
    else:
        parts = {"projections": [c.projection_flops for c in costs.layers],
                 f"scores (seq {costs.seq_len})": [c.score_flops for c in costs.layers],
                 "FFN": [c.ffn_flops for c in costs.layers]}
    bottom = np.zeros(len(layers))
    for label, values in parts.items():
        ax.bar(layers, values, bottom=bottom, label=label)
        bottom += np.asarray(values, np.float64)
    ax.set_xlabel("layer")
    ax.set_ylabel("parameters" if what == "params" else "forward FLOPs per token")
    ax.legend(fontsize="small")
    return ax


def plot_fit(compute: Sequence[float], loss: Sequence[float], fit: PowerLaw, *, ax: Any = None) -> Any:
    """Observed (compute, loss) points and the fitted power law, log-log."""
    ax = _axes(ax)
    compute = np.asarray(compute, np.float64)
    grid = np.geomspace(compute.min(), compute.max(), 100)
    low, high = fit.intervals["alpha"]
    ax.scatter(compute, loss, label="runs", zorder=3)
    label = f"L = {fit.A:.3g} C^-{fit.alpha:.3f}" + (f" + {fit.E:.3f}" if fit.E else "")
    ax.plot(grid, fit.predict(grid), label=f"{label} (alpha 95% CI [{low:.3f}, {high:.3f}])")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return ax
