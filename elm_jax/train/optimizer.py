"""The paper's optimiser: AdamW (0.9, 0.95, 1e-8), decay 0.1 on >= 2-D params, clip 1.0, and
the CoreNet schedule (linear warmup from 1e-6, then cosine to 0.1 x peak); values from the config."""

from __future__ import annotations

import jax
import optax

from elm_jax.config import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """``lr(t) = init + t (peak - init) / warmup`` for ``t < warmup``, then
    ``min + (peak - min) (1 + cos(pi (t - warmup) / period)) / 2``, flat at ``min`` past the period."""
    cosine = optax.cosine_decay_schedule(init_value=cfg.peak_lr, decay_steps=cfg.cosine_period,
                                         alpha=cfg.min_lr_ratio)
    if cfg.warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(init_value=cfg.warmup_init_lr, end_value=cfg.peak_lr,
                                   transition_steps=cfg.warmup_steps)
    return optax.join_schedules([warmup, cosine], boundaries=[cfg.warmup_steps])


def decay_mask(params: optax.Params) -> optax.Params:
    """True for parameters that get weight decay: every matrix and embedding, never a 1-D norm."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (skipped when ``grad_clip`` is 0) followed by masked AdamW."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
