"""elm_jax: pretrain, fine-tune, serve and evaluate OpenELM in JAX."""

__version__ = "0.1.0"
