"""``elm-generate`` on a run directory whose newest step has a corrupted array byte loads the previous
step and says so in one line on stderr, while its stdout stays exactly the generated text.
(``elm-convert`` and ``elm-eval`` print the same line: tests/train/test_loop.py and
tests/eval/test_cli_eval.py check it on their runs.)"""

import json

from cli_helpers import run_module, tiny_run_config, write_run_dir
from test_checkpoint_integrity import corrupt_one_byte

from elm_jax.checkpoint import Checkpointer
from elm_jax.parallel.mesh import single_device_mesh
from elm_jax.train.step import make_train_step


def test_readers_name_the_step_they_loaded_and_the_step_they_skipped(tmp_path):
    config = tiny_run_config(tmp_path)
    run_dir = write_run_dir(config)  # step 0
    checkpointer = Checkpointer(run_dir, config)
    checkpointer.save(5, *make_train_step(config, single_device_mesh()).init().checkpoint_items())
    checkpointer.close()
    corrupt_one_byte(run_dir / "checkpoints" / "5")
    line = f"loaded step 0 of {run_dir} (skipped step 5: checksum mismatch in params["

    generate = run_module("elm_jax.cli.generate", f"--checkpoint={run_dir}", "--prompt=To be",
                          "--max_new_tokens=3", f"--output={tmp_path / 'gen.jsonl'}")
    assert generate.returncode == 0, generate.stderr[-3000:]
    (report,) = [s for s in generate.stderr.splitlines() if s.startswith("loaded step")]
    assert report.startswith(line), generate.stderr
    (record,) = [json.loads(r) for r in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert generate.stdout == record["prompt"] + record["completion"] + "\n"
