"""Parameter paths: how fine-tuning names, selects and regroups the model's parameters.

A parameter is named by its path in the pure parameter dict (``layers/0/attn/q_proj``) and also by
its HF / CoreNet tensor name (``transformer.layers.0.attn.qkv_proj.weight``), so configs written
for CoreNet's module names (``token_embeddings``, ``qkv_proj``, ``out_proj``, ``proj_1``,
``proj_2``) select the same weights. Trees are nested dicts; the helpers here take subsets of them
and put them back together without copying leaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flax import traverse_util

from elm_jax.errors import ConfigError

Path = tuple[Any, ...]
Tree = dict[Any, Any]

# our name -> CoreNet's module name (q, k and v are one fused qkv_proj there, gate and up proj_1)
CORENET_NAMES = {"embed": "token_embeddings", "q_proj": "qkv_proj", "k_proj": "qkv_proj",
                 "v_proj": "qkv_proj", "gate": "proj_1", "up": "proj_1", "down": "proj_2"}


def name(path: Path) -> str:
    """``layers/0/attn/q_proj``."""
    return "/".join(map(str, path))


def corenet_name(path: Path) -> str:
    """``transformer.layers.0.attn.qkv_proj.weight``: the HF checkpoint's tensor name."""
    parts = ["transformer", *(CORENET_NAMES.get(p, str(p)) for p in path)]
    return ".".join(parts if parts[-1] == "weight" else [*parts, "weight"])


def flatten(tree: Mapping[Any, Any]) -> dict[Path, Any]:
    """``{path: leaf}`` of a nested dict."""
    return traverse_util.flatten_dict(dict(tree))


def unflatten(flat: Mapping[Path, Any]) -> Tree:
    return traverse_util.unflatten_dict(dict(flat))


def get(tree: Mapping[Any, Any], path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def subset(tree: Mapping[Any, Any], keep: Callable[[Path], bool]) -> Tree:
    """The leaves of ``tree`` whose path ``keep`` accepts, as a nested dict."""
    return unflatten({p: v for p, v in flatten(tree).items() if keep(p)})


def combine(*trees: Mapping[Any, Any]) -> Tree:
    """One nested dict holding the leaves of every tree (their paths must not overlap)."""
    merged: dict[Path, Any] = {}
    for tree in trees:
        merged |= flatten(tree)
    return unflatten(merged)


def replace(tree: Mapping[Any, Any], new: Mapping[Path, Any]) -> Tree:
    """``tree`` with the leaves at ``new``'s paths replaced."""
    return unflatten(flatten(tree) | dict(new))


def select(paths: Iterable[Path], patterns: Iterable[str], field: str) -> list[Path]:
    """The paths that any regex of ``patterns`` finds (``re.search``) in their own or their HF
    name; a pattern that selects nothing is an error naming ``field``."""
    paths = list(paths)
    chosen: set[Path] = set()
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [p for p in paths if regex.search(name(p)) or regex.search(corenet_name(p))]
        if not hits:
            raise ConfigError(
                f"{field} regex {pattern!r} matches no parameter it can apply to (names look like "
                "layers/0/attn/q_proj or CoreNet's transformer.layers.0.attn.qkv_proj.weight); fix "
                "or remove it")
        chosen.update(hits)
    return [p for p in paths if p in chosen]
