"""The package's error types: one base, one class per kind of problem a user can fix.

Every command-line tool catches ``ElmError`` alone and prints its message as one line (exit 2);
anything else is a programming error and keeps its traceback. Messages name the problem and the fix.
Imports nothing from the package (floor 0).
"""


class ElmError(Exception):
    """A problem the user can fix (bad value, missing file, damaged checkpoint); one-line message."""


class ConfigError(ElmError, ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""


class DataError(ConfigError):
    """Data the pipeline cannot use (missing file, empty or fully filtered source, bad tokenizer).

    A ``ConfigError`` because the fix is always in the config or on disk.
    """


class CheckpointError(ElmError):
    """No usable checkpoint, a damaged one, or one that does not fit this run or model."""


class TrainingError(ElmError):
    """The run cannot go on (NaN loss, exhausted data, a run directory of another model)."""


class UsageError(ElmError, ValueError):
    """An argument that cannot work (bad path, missing flag, bad value, bad prompt or task)."""
