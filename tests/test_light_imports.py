"""What must import on a bare machine: the model on jax + flax, every experiment config on no jax."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "experiments" / "ablations").glob("*.py"))
CELL = "experiments/sweep_cell.py"  # an experiment whose argument names a sweep cell
EXPERIMENTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "experiments").rglob("*.py")
                     if str(p.relative_to(ROOT)) not in SWEEPS + [CELL])

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=blocked) + code],
                          capture_output=True, text=True, cwd=ROOT,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def test_model_and_kernels_import_without_heavy_dependencies():
    out = run_blocked({"grain", "tensorflow_datasets", "orbax", "sentencepiece", "tensorflow"},
                      "import elm_jax.model, elm_jax.kernels, elm_jax.convert.hf; print('ok')")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_and_validates_without_jax(experiment):
    """With jax, flax, orbax and grain absent, the config loads and validates (layer shapes too)."""
    code = f"""
sys.modules['jax'] = None
import importlib.util
from elm_jax.config import from_config_dict
spec = importlib.util.spec_from_file_location('exp', {experiment!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = from_config_dict(module.get_config())
print(config.name, len(config.model.layer_shapes()))
"""
    out = run_blocked({"flax", "orbax", "grain", "optax", "tensorflow_datasets"}, code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[1].isdigit()


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_expands_without_jax(sweep):
    """A sweep file's grid (cells solved to matched cost) and a launched cell's experiment
    (``sweep_cell.py:<sweep>@<cell>``) are built without jax, as ``elm-sweep --dry-run`` needs."""
    code = f"""
sys.modules['jax'] = None
import importlib.util
from elm_jax.config import from_config_dict
from elm_jax.explore.sweep import expand, parse_sweep
spec = importlib.util.spec_from_file_location('sweep', {sweep!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
cells = expand(parse_sweep(module.get_config(), {sweep!r}), '/tmp/unused')
spec = importlib.util.spec_from_file_location('cell', {CELL!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = from_config_dict(module.get_config({sweep!r} + '@' + cells[-1].name))
print(len(cells), config.name)
"""
    out = run_blocked({"flax", "orbax", "grain", "optax", "tensorflow_datasets"}, code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[0]) > 1


def test_blocking_really_blocks():
    """The harness above can fail: importing the model with jax absent does."""
    out = run_blocked({"grain"}, "import sys; sys.modules['jax'] = None; import elm_jax.model")
    assert out.returncode != 0 and "jax" in out.stderr
