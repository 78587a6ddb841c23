"""Packaging is in pyproject.toml; this adds one file pyproject can't: the lm-eval start-up hook.

``elm_jax_lm_eval.pth`` goes to the top of site-packages (regular and editable installs) so that
stock ``lm_eval --model elm_jax`` finds our model (see ``elm_jax/lm_eval_hook.py``). Its one line
imports nothing unless the command line mentions lm-eval, and does nothing when
elm_jax is gone or outside lm-eval's command line.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "elm_jax_lm_eval.pth"
# Only a command line that mentions lm_eval / lm-eval imports anything: every other interpreter
# (and every other checkout of elm_jax on sys.path) is left alone.
HOOK = ('import sys; exec("if any(\'lm_eval\' in a or \'lm-eval\' in a for a in getattr(sys, '
        '\'orig_argv\', sys.argv)):\\n    try:\\n        from elm_jax.lm_eval_hook import install\\n'
        '    except ImportError:\\n        pass\\n    else:\\n        install()")\n')


def write_hook(directory: str) -> str:
    path = Path(directory, PTH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HOOK)
    return str(path)


class BuildWithHook(build_py):
    """build_py that also places the ``.pth`` hook at the root of the built tree (the wheel's)."""

    def run(self) -> None:
        super().run()
        write_hook(self.build_lib)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH))]


class EditableWithHook(editable_wheel):
    """editable_wheel that also puts the ``.pth`` hook in the editable wheel.

    An editable wheel carries only the import finder, not build_py's files; everything in the
    unpacked directory setuptools fills (its namespace step) goes in, so the hook joins it there.
    If a future setuptools changes this, ``tests/eval/test_cli_eval.py`` fails on the hook.
    """

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        write_hook(installation_dir)


setup(cmdclass={"build_py": BuildWithHook, "editable_wheel": EditableWithHook})
