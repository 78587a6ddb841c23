"""The explore package's arithmetic (schedules, costs, solver, runs, statistics, sweep expansion)
imports without jax or flax, so schedules can be explored on any laptop."""

import subprocess
import sys

from cli_helpers import ROOT

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'jax', 'jaxlib', 'flax', 'optax', 'orbax', 'grain'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import elm_jax.explore.schedules, elm_jax.explore.costs, elm_jax.explore.solver
import elm_jax.explore.runs, elm_jax.explore.stats, elm_jax.explore.sweep, elm_jax.explore.results
print('ok')
"""

def test_explore_arithmetic_imports_without_jax():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
