"""The ``--config`` experiment file on the command line: its default, and what went wrong loading it.

ml_collections loads the file and applies ``--config.a.b=value`` overrides while absl parses the
flags, so a missing file, a syntax error, a file without ``get_config`` or an override of a field
the config lacks surfaces as a long traceback from inside flag parsing (or, for a default given
to ``DEFINE_config_file``, from the command's import). ``elm_jax.cli.common`` instead puts the
default on the command line and turns these failures into one line naming the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml_collections.config_flags import config_path

FLAG = "config"
DEFAULT_CONFIG: str | None = None  # set by common.define_config_flag: the command's default file

_OVERRIDE = re.compile(rf"^--?(?:no)?{FLAG}\.([^=]+)")


def config_arg(argv: list[str]) -> str | None:
    """The last ``--config`` value on the command line (``--config=x``, ``--config x``), if any."""
    found = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in (f"--{FLAG}", f"-{FLAG}"):
            found = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return found


def with_default(argv: list[str]) -> list[str]:
    """``argv`` with ``--config=<DEFAULT_CONFIG>`` added when it names no config file."""
    if DEFAULT_CONFIG is None or config_arg(argv) is not None:
        return argv
    return [argv[0], f"--{FLAG}={DEFAULT_CONFIG}", *argv[1:]]


def file_problem(spec: str) -> str | None:
    """What keeps ``--config spec`` from being loaded at all (checked before ml_collections tries,
    which would only fail when the config is first read), or None."""
    path = Path(spec.split(":", 1)[0])
    where = f"--{FLAG} {spec}"
    if not path.exists():
        return f"{where}: no such file; pass an experiment file (e.g. experiments/tiny.py)"
    if path.is_dir():
        files = ", ".join(p.name for p in sorted(path.glob("*.py"))[:5]) or "none here"
        return f"{where} is a directory; pass one experiment file in it ({files})"
    return None


def describe_problem(err: Exception, argv: list[str]) -> str:
    """One line: what is wrong with the ``--config`` file or an override in ``argv``, and the fix."""
    spec = config_arg(argv) or ""
    where = f"--{FLAG} {spec}"
    if isinstance(err, SyntaxError):
        return f"{where}: syntax error at line {err.lineno}: {err.msg}; fix the file"
    if isinstance(err, AttributeError) and err.name == "get_config":
        return (f"{where} defines no get_config(); an experiment file defines get_config(arg=None) "
                "returning its ConfigDict (see experiments/tiny.py)")
    unknown = _unknown_override(spec, argv)
    if unknown is not None:
        return unknown
    line = next((f"line {frame.lineno}: " for frame in reversed(traceback.extract_tb(err.__traceback__))
                 if Path(frame.filename).resolve() == Path(spec.split(":", 1)[0]).resolve()), "")
    first = str(err).strip().splitlines()
    return f"{where}: {line}{type(err).__name__}: {first[0] if first else ''}; fix the file"


def load(spec: str) -> Any:
    """``get_config(arg)`` of ``path.py[:arg]``, as ml_collections calls it."""
    path, *arg = spec.split(":", 1)
    module_spec = importlib.util.spec_from_file_location("elm_jax_experiment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*arg)


def _unknown_override(spec: str, argv: list[str]) -> str | None:
    """The first ``--config.x.y`` override naming a field the loaded config lacks, described."""
    try:
        config = load(spec)
    except Exception:  # noqa: BLE001 (the file itself is broken: not an override's fault)
        return None
    for arg in argv[1:]:
        match = _OVERRIDE.match(arg)
        if match is None:
            continue
        path = match.group(1)
        try:
            fields = config_path.split(path)
        except ValueError:
            return f"--{FLAG}.{path}: not a field path (write --{FLAG}.section.field=value)"
        problem = _missing_field(config, fields)
        if problem is not None:
            return f"--{FLAG}.{path}: {problem}"
    return None


def _missing_field(config: Any, fields: tuple[Any, ...]) -> str | None:
    node, walked = config, ""
    for field in fields:
        if isinstance(field, int):
            try:
                node = node[field]
            except (IndexError, KeyError, TypeError):
                return f"{walked} has no item [{field}] (it has {len(node)})"
            walked += f"[{field}]"
            continue
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return None  # a value with no fields below it: ml_collections' message applies
        names = sorted(node.keys())
        if field not in names:
            where = f"{walked}." if walked else ""
            close = difflib.get_close_matches(field, names, n=1)
            hint = (f"did you mean {where}{close[0]}?" if close
                    else f"the fields {'of ' + walked if walked else 'at the top'} are "
                         f"{', '.join(names)}")
            return f"the config has no field {where}{field}; {hint}"
        node = node[field]
        walked = f"{walked}.{field}" if walked else field
    return None
