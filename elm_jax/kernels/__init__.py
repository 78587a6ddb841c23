"""Attention kernels behind one entry point (imports only jax)."""

from elm_jax.kernels.attention import attention

__all__ = ["attention"]
