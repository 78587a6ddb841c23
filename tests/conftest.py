"""Test setup: CPU only, 8 simulated devices for sharding tests (set before jax is imported)."""

import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
# This checkout's package wins over any other installed copy; tests/ holds shared references.
sys.path[:0] = [os.path.dirname(TESTS), TESTS]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def tiny_model_config():
    """A 3-layer model whose layers differ in head counts and FFN width."""
    from elm_jax.config import ModelConfig

    return ModelConfig(vocab_size=97, num_layers=3, model_dim=64, head_dim=16, num_gqa_groups=2,
                       qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), ffn_dim_divisor=32)


@pytest.fixture
def random_hf_checkpoint(tmp_path):
    """Write an HF-layout OpenELM directory with random weights; returns (path, hf_config, tensors)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from elm_jax.convert.hf import expected_shapes, hf_config

    def make(cfg, dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        tensors = {name: (rng.standard_normal(shape) * 0.3 + (1.0 if len(shape) == 1 else 0.0))
                   .astype(dtype) for name, shape in expected_shapes(cfg).items()}
        path = tmp_path / f"hf_{seed}"
        path.mkdir()
        config = hf_config(cfg)
        config["torch_dtype"] = np.dtype(dtype).name
        (path / "config.json").write_text(json.dumps(config))
        save_file(tensors, str(path / "model.safetensors"), {"format": "pt"})
        return path, config, tensors

    return make
