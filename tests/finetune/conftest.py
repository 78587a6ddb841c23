"""Fine-tuning tests share the training tests' persistent XLA cache and one tiny base run."""

import pytest
from finetune_helpers import make_base
from train.conftest import compilation_cache  # noqa: F401 (the session-wide XLA cache fixture)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """(run directory, its config): a 2-layer model at its random initialisation, step 0."""
    return make_base(tmp_path_factory.mktemp("base"))
