"""Where adapter directories go: never over a complete adapter, again over a cut-off save, and into
a ``gs://`` bucket as they would locally (a local GCS emulator, in a child process that has only
the emulator's environment)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from gcs_emulator import emulator

from elm_jax.config import default_config, from_config_dict
from elm_jax.errors import UsageError
from elm_jax.finetune.export import ADAPTER_CONFIG, TRAINABLE, read_adapter_config, save_adapter

ROOT = Path(__file__).resolve().parents[2]


def test_a_complete_adapter_is_never_overwritten_and_a_cut_off_one_is_written_again(tmp_path):
    config = from_config_dict(default_config())
    path = tmp_path / "adapter-step3"
    save_adapter(path, config, {"lora_a": np.zeros((2, 3))})
    with pytest.raises(UsageError, match="exists; choose a new adapter directory"):
        save_adapter(path, config, {"lora_a": np.ones((2, 3))})
    assert ocp.StandardCheckpointer().restore(path / TRAINABLE)["lora_a"].sum() == 0
    (path / ADAPTER_CONFIG).unlink()  # as a save cut off before its config
    with pytest.raises(UsageError, match="not found; --adapter takes a directory"):
        read_adapter_config(path)
    save_adapter(path, config, {"lora_a": np.ones((2, 3))})
    assert ocp.StandardCheckpointer().restore(path / TRAINABLE)["lora_a"].sum() == 6
    assert read_adapter_config(path).train.steps == config.train.steps


SAVE_IN_A_BUCKET = """
import json, numpy as np, orbax.checkpoint as ocp
from elm_jax.config import default_config, from_config_dict
from elm_jax.finetune.export import TRAINABLE, read_adapter_config, save_adapter
config = from_config_dict(default_config())
path = save_adapter("gs://bkt/run/adapter-step3", config, {"lora_a": np.arange(6.0).reshape(2, 3)})
print(json.dumps({"path": str(path), "steps": read_adapter_config(path).train.steps,
                  "restored": ocp.StandardCheckpointer().restore(path / TRAINABLE)["lora_a"].tolist()}))
"""


def test_an_adapter_directory_in_a_bucket(tmp_path):
    with emulator() as emu:
        emu.create_bucket("bkt")
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | emu.env | {
            "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", SAVE_IN_A_BUCKET], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300)
        names = set(emu.objects("bkt", "run/adapter-step3/"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["path"] == "gs://bkt/run/adapter-step3"
    assert result["restored"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert result["steps"] == from_config_dict(default_config()).train.steps
    assert f"run/adapter-step3/{ADAPTER_CONFIG}" in names
    assert any(name.startswith(f"run/adapter-step3/{TRAINABLE}/") for name in names)
    assert not (tmp_path / "gs:").exists()
