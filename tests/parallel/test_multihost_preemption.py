"""SLURM's early SIGTERM (``--signal=B:TERM@lead``) on a two-process job: the batch script that
launch/slurm.py writes passes the signal to srun (a stand-in that forwards it to its tasks, as the
real one does), and both processes stop at the same step, save it and exit cleanly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fake_commands import install
from localhost import REPO, WORKER, base_env, free_port

from elm_jax.common_types import CHECKPOINTS_DIR, METRICS_FILE


def _batch_script(tmp_path, *program_args):
    made = subprocess.run(
        [sys.executable, str(REPO / "launch" / "slurm.py"), "--nodes", "1", "--gpus-per-node", "2",
         "--log-dir", str(tmp_path), "--workdir", str(REPO), "--coordinator-port", str(free_port()),
         "--program", f"{sys.executable} {WORKER}", "--signal-lead", "60", "--dry-run", "--",
         *program_args], capture_output=True, text=True, timeout=120, check=True)
    script = tmp_path / "job.sbatch"
    script.write_text(made.stdout.split(":\n", 1)[1].rsplit("\n+ sbatch", 1)[0])
    assert "#SBATCH --signal=B:TERM@60" in script.read_text()
    return script


def test_sigterm_stops_both_processes_at_one_step_with_a_checkpoint(tmp_path):
    root = tmp_path / "runs"
    # 1000 slow steps (0.3 s per batch): the run is still going when the signal comes.
    script = _batch_script(tmp_path, "synthetic", str(root), "1000", "0.3", "2,1,1")
    env = {**base_env(1), "PATH": f"{install(tmp_path / 'bin', 'srun')}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
           "SLURM_STEP_TASKS_PER_NODE": "2"}
    output = tmp_path / "job.out"
    with output.open("w") as out:
        job = subprocess.Popen(["bash", str(script)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        metrics = root / "2x1x1" / METRICS_FILE
        deadline = time.time() + 600
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert job.poll() is None and time.time() < deadline, output.read_text()[-4000:]
            time.sleep(0.5)
        job.send_signal(signal.SIGTERM)  # what SLURM sends the batch shell, `lead` s early
        assert job.wait(timeout=300) == 0, output.read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()
    text = output.read_text()
    assert "SIGTERM: stopping the training tasks" in text
    import json

    results = [json.loads(line[len("RESULT "):]) for line in text.splitlines()
               if line.startswith("RESULT ")]
    assert sorted(r["process_index"] for r in results) == [0, 1]
    runs = [r["runs"][0] for r in results]
    step = runs[0]["step"]
    assert all(run["preempted"] and run["step"] == step for run in runs) and 2 <= step < 1000
    saved = sorted(int(p.name) for p in Path(root / "2x1x1" / CHECKPOINTS_DIR).glob("[0-9]*"))
    assert saved == [step]
