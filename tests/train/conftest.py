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
