"""The one error type of the data package."""

from elm_jax.config import ConfigError


class DataError(ConfigError):
    """Data the pipeline cannot use (missing file, empty or fully filtered source, corrupt tokenizer).

    A ``ConfigError`` because the fix is always in the config or on disk: command-line tools print
    it as one line and exit with status 2.
    """
