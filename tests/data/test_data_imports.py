"""The data modules import without grain, tfds, sentencepiece or jax (they load them when used),
so configs can be validated and paths resolved anywhere, cheaply."""

import os
import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'grain', 'tensorflow_datasets', 'sentencepiece', 'jax', 'absl'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import elm_jax.data.pipeline, elm_jax.data.prepare, elm_jax.data.tokenizer, elm_jax.data.sources
from elm_jax.config import DataConfig
DataConfig(sources=({'kind': 'jsonl', 'train': 'x.jsonl', 'field': 'body'},)).validate()
print('ok')
"""


def test_data_modules_import_without_heavy_dependencies():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=root,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
