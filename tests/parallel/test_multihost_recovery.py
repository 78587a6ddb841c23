"""Two processes on localhost (gloo) resume together from damage only one of them sees, with a slow
move of the damaged step, and after the Shakespeare tokenizer was retrained on a fresh machine
(same vocabulary, other bytes)."""

import json
import shutil
from pathlib import Path

from localhost import base_env, free_port, run_processes
from multiprocess_worker import small_config
from sentencepiece import sentencepiece_model_pb2


def _two_processes(cache_dir, *args, **env):
    address = f"127.0.0.1:{free_port()}"
    cache = {"JAX_COMPILATION_CACHE_DIR": str(cache_dir),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    envs = [{**base_env(2), **cache, **env, "ELM_COORDINATOR_ADDRESS": address,
             "ELM_NUM_PROCESSES": "2", "ELM_PROCESS_ID": str(i)} for i in range(2)]
    return run_processes(["train", *args], envs, timeout=400)


def _retrain_bytes(path: Path) -> None:
    """What retraining on another host changes: the trainer's own settings (its temp input path),
    not the vocabulary."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    model.trainer_spec.input[:] = ["/tmp/another-host/shakespeare.txt"]
    path.write_bytes(model.SerializeToString())


def test_damage_on_one_process_slow_set_aside_and_retrained_tokenizer(tmp_path, monkeypatch):
    from elm_jax.data.paths import shakespeare_dir
    from elm_jax.data.prepare import ensure_prepared
    from elm_jax.data.tokenizer import tokenizer_path

    run_dir = tmp_path / "run"
    config = small_config(str(run_dir), 6)
    ensure_prepared(config, log=lambda *a: None)  # the shared cache, once
    # A private copy of the prepared data: this test retrains (rewrites) its tokenizer.
    shutil.copytree(shakespeare_dir(), tmp_path / "data" / "shakespeare",
                    ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("ELM_JAX_CACHE", str(tmp_path / "data"))
    cache = {"ELM_JAX_CACHE": str(tmp_path / "data")}
    first = _two_processes(tmp_path / "cache", str(run_dir), "4", **cache)  # saves at 2 and 4
    assert [r["step"] for r in first] == [4, 4]

    (run_dir / "checkpoints" / "4" / "data" / "process_1-of-2.json").unlink()  # seen by process 1
    tokenizer = tokenizer_path(config)
    assert tokenizer.is_relative_to(tmp_path)
    before = tokenizer.read_bytes()
    _retrain_bytes(tokenizer)
    assert tokenizer.read_bytes() != before
    second = _two_processes(tmp_path / "cache", str(run_dir), "6", ELM_TEST_SLOW_MOVE="3",
                            **cache)
    assert [(r["step"], r["steps_before"]) for r in second] == [(6, [2, 4])] * 2
    assert second[0]["loss"] == second[1]["loss"]

    (moved,) = (run_dir / "corrupt_checkpoints").iterdir()
    reason = (moved / "reason.txt").read_text()
    assert moved.name.startswith("4-") and "no data-iterator state" in reason
    assert reason.strip().endswith("(process 1)")  # the one process that saw the damage
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 3, 4, 5, 6]  # both processes went on from step 2
