"""Training tests share one persistent XLA compilation cache (in-process and subprocess runs of the
same step compile once), which keeps compile-heavy tests inside the CPU time budget."""

import os

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    path = os.environ.get("ELM_JAX_TEST_COMPILE_CACHE") or str(tmp_path_factory.mktemp("xla_cache"))
    os.environ["ELM_JAX_TEST_COMPILE_CACHE"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, compilation_cache):
    """8 steps of the synthetic config (checkpoints at 4 and 8, evals, HF export): (config, result)."""
    from synthetic import FAST_COMPILE, make_iterator, tiny_config

    from elm_jax.parallel.mesh import single_device_mesh
    from elm_jax.train.loop import train

    config = tiny_config(tmp_path_factory.mktemp("trained") / "run")
    result = train(config, make_iterator=make_iterator, mesh=single_device_mesh(), show_progress=False,
                   entropy_tokens=20_000, compiler_options=FAST_COMPILE)
    return config, result
