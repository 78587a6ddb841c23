"""The model and kernels import on machines that carry only jax and flax."""

import os
import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'grain', 'tensorflow_datasets', 'orbax', 'ml_collections',
                                  'sentencepiece'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import elm_jax.model, elm_jax.kernels, elm_jax.convert.hf
print('ok')
"""


def test_model_and_kernels_import_without_heavy_dependencies():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=root,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_lm_eval_startup_hook_stays_out_of_other_processes():
    """The installed ``.pth`` hook registers with lm-eval only inside lm-eval's command line."""
    from elm_jax.lm_eval_hook import is_lm_eval_command_line

    out = subprocess.run([sys.executable, "-c", "import sys; print('lm_eval' in sys.modules)"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    assert is_lm_eval_command_line(["/venv/bin/lm_eval", "run"], ["/venv/bin/python", "x"])
    assert is_lm_eval_command_line(["/venv/bin/lm-eval"], [])
    assert is_lm_eval_command_line(["-m"], ["python", "-m", "lm_eval", "--tasks", "x"])
    assert not is_lm_eval_command_line(["-c"], ["python", "-c", "print('lm_eval')"])
    assert not is_lm_eval_command_line(["/venv/bin/elm-train"], ["python", "/venv/bin/elm-train"])
