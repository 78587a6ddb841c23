"""Make stock ``lm_eval --model elm_jax`` find our model.

lm-eval-harness (0.4.13) discovers models only in its own registry and loads no plugins, so the
package installs ``elm_jax_lm_eval.pth``, which calls :func:`install` at interpreter start. It does
nothing (and imports nothing) unless this process is lm-eval's command line; then it registers
``elm_jax`` as a lazy entry, so jax and the model load only when that model is asked for.
"""

from __future__ import annotations

import os
import sys

MODEL_NAME = "elm_jax"
MODEL_TARGET = "elm_jax.eval.harness:ElmJaxLM"
_LM_EVAL_PROGRAMS = ("lm_eval", "lm-eval")


def is_lm_eval_command_line(argv: list[str], orig_argv: list[str]) -> bool:
    """True for the ``lm_eval`` / ``lm-eval`` scripts and for ``python -m lm_eval``."""
    if argv and os.path.basename(argv[0]) in _LM_EVAL_PROGRAMS:
        return True
    return any(a == "-m" and b == "lm_eval" for a, b in zip(orig_argv, orig_argv[1:]))


def register() -> None:
    """Add ``elm_jax`` to lm-eval's model registry as a lazy ``module:attr`` placeholder."""
    import lm_eval.models  # noqa: F401  (lm-eval's own lazy entries, as its CLI would load them)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def install() -> None:
    """Called from the ``.pth`` file: register only inside lm-eval's command line, never fail."""
    if not is_lm_eval_command_line(sys.argv, getattr(sys, "orig_argv", [])):
        return
    try:
        register()
    except Exception as err:  # a broken optional extra must not break lm-eval for other models
        print(f"elm_jax: could not register the elm_jax model with lm-eval: {err}", file=sys.stderr)
