"""Launchers: their --dry-run shows the commands a user expects; the local ones really run."""

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_commands import install

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
WORKER = REPO / "tests" / "parallel" / "multiprocess_worker.py"


def launch(script, *args, cwd=None, env=None, timeout=120):
    result = subprocess.run([sys.executable, str(LAUNCH / script), *args], capture_output=True,
                            text=True, cwd=cwd or REPO, env={**os.environ, **(env or {})},
                            timeout=timeout)
    return result


def commands(output):
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


def test_tpu_vm_dry_run_creates_installs_trains_waits_collects_and_deletes():
    result = launch("tpu_vm.py", "--name", "elm-test", "--zone", "us-west4-a", "--accelerator-type",
                    "v5e-16", "--spot", "--project", "my-proj", "--config", "experiments/tiny.py",
                    "--run-dir", "gs://bucket/runs/tiny", "--dry-run", "--", "--config.train.steps=50")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    where = "--zone=us-west4-a --project=my-proj"
    assert cmds[0] == (f"gcloud compute tpus tpu-vm create elm-test {where} "
                       "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot")
    assert cmds[1].startswith(f"git -C {REPO} archive --format=tar.gz --prefix=elm_jax/")
    assert cmds[2].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in cmds[2]
    assert "--worker=all" in cmds[3] and "pip install" in cmds[3] and "elm_jax[tpu]" in cmds[3]
    train = cmds[4]
    assert train.startswith(f"gcloud compute tpus tpu-vm ssh elm-test {where} --worker=all ")
    assert ("ELM_DISTRIBUTED=tpu python3 -m elm_jax.cli.train --config=experiments/tiny.py "
            "--config.train.run_dir=gs://bucket/runs/tiny --config.train.steps=50") in train
    assert "setsid nohup bash -c" in train  # detached: a dropped ssh session does not stop it
    # then the workers are polled until training has ended on every one
    assert "--worker=all" in cmds[5] and "elm-train.exit" in cmds[5] and "until every" in cmds[5]
    # v5e-16 is four hosts of four chips: one log per worker, then the slice is deleted.
    logs = cmds[6:10]
    assert [c.split("--worker=")[1] for c in logs] == ["0", "1", "2", "3"]
    assert all("elm-train.log" in c and "scp" in c for c in logs)
    assert cmds[10] == f"gcloud compute tpus tpu-vm delete elm-test {where} --quiet"
    assert len(cmds) == 11


def test_tpu_vm_queued_resource_waits_and_deletes_the_request():
    result = launch("tpu_vm.py", "--name", "q", "--zone", "us-east5-a", "--accelerator-type", "v5p-32",
                    "--queued", "--spot", "--run-dir", "gs://b/r", "--dry-run")
    cmds = commands(result.stdout)
    assert cmds[0] == ("gcloud compute tpus queued-resources create q --node-id=q --zone=us-east5-a "
                       "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --spot")
    assert cmds[1].startswith("gcloud compute tpus queued-resources describe q") and "ACTIVE" in cmds[1]
    assert cmds[-1] == "gcloud compute tpus queued-resources delete q --zone=us-east5-a --force --quiet"
    assert sum("--worker=" in c and "scp 'q:~/elm-train.log'" in c for c in cmds) == 4  # 16 chips / 4


def test_tpu_vm_installs_from_a_pip_requirement_and_copies_the_experiment_file():
    result = launch("tpu_vm.py", "--name", "x", "--zone", "z", "--accelerator-type", "v6e-8",
                    "--install", "elm_jax[tpu] @ git+https://example.com/elm_jax", "--steps",
                    "setup,train", "--config", "experiments/tiny.py", "--dry-run")
    cmds = commands(result.stdout)
    assert len(cmds) == 3 and "git archive" not in result.stdout
    assert "--worker=all" in cmds[0] and "python3 -m pip install -q" in cmds[0]
    assert "elm_jax[tpu] @ git+https://example.com/elm_jax" in cmds[0]
    # no checkout on the workers: the experiment file goes to ~/elm_jax/ and is named there
    assert cmds[1] == ("gcloud compute tpus tpu-vm scp experiments/tiny.py 'x:~/elm_jax/tiny.py' "
                       "--zone=z --worker=all")
    assert "python3 -m elm_jax.cli.train --config=tiny.py" in cmds[2]


def test_tpu_vm_steps_keep_and_local_run_dir_warning():
    result = launch("tpu_vm.py", "--name", "x", "--zone", "z", "--accelerator-type", "v6e-16",
                    "--runtime-version", "custom-image", "--steps", "train", "--keep", "--dry-run")
    cmds = commands(result.stdout)
    assert len(cmds) == 1 and "--worker=all" in cmds[0]
    assert "shared storage (gs://" in result.stdout  # 4 workers, no gs:// run dir


@pytest.mark.parametrize("args,message", [
    (["--accelerator-type", "v5p-12"], "power of two"),
    (["--accelerator-type", "v9-8"], "unknown TPU topology"),
    (["--accelerator-type", "v5e-8", "--steps", "train,reboot"], "unknown step"),
    (["--accelerator-type", "v5e-8", "--spot", "--preemptible"], "exclusive"),
])
def test_tpu_vm_rejects_bad_flags_with_a_reason(args, message):
    result = launch("tpu_vm.py", "--name", "x", "--zone", "z", *args, "--dry-run")
    assert result.returncode == 2 and message in result.stderr


def test_slurm_script_one_process_per_gpu():
    result = launch("slurm.py", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                    "--account", "lab", "--time", "12:00:00", "--setup", "source venv/bin/activate",
                    "--workdir", "/shared/elm_jax", "--signal-lead", "400", "--dry-run", "--",
                    "--config", "experiments/openelm_1_1b.py")
    out = result.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=12:00:00",
                 "#SBATCH --signal=B:TERM@400",
                 "cd /shared/elm_jax", "source venv/bin/activate", "export ELM_DISTRIBUTED=slurm",
                 "srun --kill-on-bad-exit=1 --label python3 -m elm_jax.cli.train --config "
                 "experiments/openelm_1_1b.py &"):
        assert line in out.splitlines(), line
    assert commands(out)[-1].startswith("sbatch ") and commands(out)[-1].endswith(".sbatch")


def test_slurm_script_one_process_per_node():
    out = launch("slurm.py", "--nodes", "4", "--gpus-per-node", "4", "--per", "node",
                 "--signal-lead", "120", "--dry-run").stdout
    assert "#SBATCH --ntasks-per-node=1" in out and "#SBATCH --gpus-per-node=4" in out


def test_slurm_signal_lead_covers_writing_the_checkpoint():
    """OpenELM-3B (vocabulary 32128) has 3,037,040,640 parameters (docs/OPENELM.md): 12 bytes
    each (parameters and AdamW's two moments, float32) at 200 MB/s take 183 s, plus the floor."""
    sys.path.insert(0, str(LAUNCH))
    import launchlib
    import slurm

    def lead(*flags):
        args, train_args = slurm.parse_args(["--nodes", "2", "--gpus-per-node", "8", *flags])
        return slurm.signal_lead(args, train_args, launchlib.Runner(True, io.StringIO()))

    config = ["--", "--config", "experiments/openelm_3b.py"]
    assert lead(*config) == 120 + math.ceil(12 * 3_037_040_640 / 200e6) == 303
    assert lead("--write-mb-per-s", "50", *config) == 120 + math.ceil(12 * 3_037_040_640 / 50e6)
    assert lead("--signal-lead", "900", *config) == 900
    assert lead() < 125  # elm-train's default, the tiny model: about the floor


def test_slurm_script_runs_training_program_on_every_task(tmp_path):
    """The generated script, run by bash with a stand-in srun: two tasks join one jax run."""
    from localhost import base_env, free_port

    result = launch("slurm.py", "--nodes", "1", "--gpus-per-node", "2", "--log-dir", str(tmp_path),
                    "--workdir", str(REPO), "--coordinator-port", str(free_port()),
                    "--program", f"{sys.executable} {WORKER}", "--signal-lead", "60", "--dry-run",
                    "--", "allgather")
    script = result.stdout.split(":\n", 1)[1].rsplit("\n+ sbatch", 1)[0]
    (tmp_path / "job.sbatch").write_text(script)
    bin_dir = install(tmp_path / "bin", "srun")
    env = {**base_env(2), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "99",
           "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2"}
    done = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2 and all('"mode": "slurm"' in r and '"total": 22.0' in r for r in results)


def test_multihost_dry_run_per_gpu_over_ssh():
    out = launch("multihost.py", "--hosts", "node-a,node-b", "--per", "gpu", "--gpus-per-host", "2",
                 "--workdir", "~/elm_jax", "--dry-run", "--", "--config",
                 "experiments/openelm_1_1b.py").stdout
    cmds = commands(out)
    assert len(cmds) == 4
    for pid, (host, local) in enumerate([("node-a", 0), ("node-a", 1), ("node-b", 0), ("node-b", 1)]):
        assert cmds[pid].startswith(f"ssh -o BatchMode=yes {host} 'cd ~/elm_jax && "
                                    "{ ELM_COORDINATOR_ADDRESS=node-a:8476 ELM_NUM_PROCESSES=4 "
                                    f"ELM_PROCESS_ID={pid} ELM_LOCAL_DEVICE_IDS={local} "
                                    "python3 -m elm_jax.cli.train --config experiments/openelm_1_1b.py "
                                    "& echo $! > /tmp/elm-launch-")


def test_multihost_runs_two_local_processes_and_keeps_their_logs(tmp_path):
    from localhost import free_port

    result = launch("multihost.py", "--hosts", "localhost", "--processes-per-host", "2",
                    "--port", str(free_port()), "--workdir", str(REPO), "--log-dir", str(tmp_path),
                    "--program", f"{sys.executable} {WORKER}",
                    "--env", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                    "--env", "JAX_PLATFORMS=cpu", "--env", f"PYTHONPATH={REPO}", "--", "allgather",
                    env={"ELM_DISTRIBUTED": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    logs = sorted(tmp_path.glob("*.log"))
    assert len(logs) == 2
    for index, log in enumerate(logs):
        text = log.read_text()
        assert f'"process_index": {index}' in text and '"gathered": [0.0, 1.0, 10.0, 11.0]' in text


def test_multihost_stops_everyone_when_one_process_fails(tmp_path):
    program = (f"{sys.executable} -c \"import os, sys, time; "
               "sys.exit(3) if os.environ['ELM_PROCESS_ID'] == '1' else time.sleep(60)\"")
    result = launch("multihost.py", "--hosts", "localhost", "--processes-per-host", "2",
                    "--log-dir", str(tmp_path), "--program", program, timeout=50)
    assert result.returncode == 3
    assert "process 1 exited with 3; stopping the others" in result.stdout
