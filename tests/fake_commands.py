"""Stand-ins for gcloud, ssh and srun, put first on PATH so the launchers' real code paths run here.

- ``gcloud``: a TPU slice of ``FAKE_TPU_WORKERS`` workers, each a directory ``ROOT/worker<i>``
  used as its ``$HOME``; ``tpu-vm ssh --command`` runs the command with bash on each selected
  worker, ``scp`` copies between here and the workers, ``describe`` prints ``ROOT/state`` (READY
  by default). Every call is appended to ``ROOT/calls.jsonl`` (argv, start, end, exit code).
  ``ROOT/drop_polls`` holds how many status polls still fail as a dropped connection (exit 255).
- ``ssh``: runs the remote command with bash on this machine. Like a real ssh client without a
  terminal, when it is killed the remote command goes on running.
- ``srun``: starts ``SLURM_NTASKS`` tasks with SLURM's per-task variables and, like the real one,
  forwards SIGTERM to them.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

GCLOUD = textwrap.dedent('''\
    #!{python}
    import json, os, shutil, subprocess, sys, time

    root, workers = os.environ["FAKE_TPU_ROOT"], int(os.environ["FAKE_TPU_WORKERS"])
    argv, start = sys.argv[1:], time.time()

    def option(name):
        return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{{name}}=")), None)

    def home(worker):
        return os.path.join(root, f"worker{{worker}}")

    def selected():
        worker = option("worker")
        return range(workers) if worker in (None, "all") else [int(worker)]

    def drop_poll(command):
        path = os.path.join(root, "drop_polls")
        if "elm-train: running" not in command or not os.path.exists(path):
            return False
        left = int(open(path).read())
        if left <= 0:
            return False
        open(path, "w").write(str(left - 1))
        return True

    def on_worker(path, worker):  # "name:~/x" -> the worker's file
        return os.path.join(home(worker), path.split(":", 1)[1].replace("~/", "", 1))

    code, verb = 0, argv[3]
    if verb == "ssh":
        command = option("command")
        if drop_poll(command):
            print("Connection closed by remote host", file=sys.stderr)
            code = 255
        else:
            for worker in selected():
                done = subprocess.run(["bash", "-c", command], cwd=home(worker), text=True,
                                      capture_output=True, env={{**os.environ, "HOME": home(worker)}})
                sys.stdout.write(done.stdout)
                sys.stderr.write(done.stderr)
                code = max(code, done.returncode)
    elif verb == "scp":
        source, target = [a for a in argv[4:] if not a.startswith("--")][:2]
        for worker in selected():
            if ":" in source:
                shutil.copy(on_worker(source, worker), target)
            else:
                shutil.copy(source, on_worker(target, worker))
    elif verb == "describe":
        state = os.path.join(root, "state")
        print(open(state).read().strip() if os.path.exists(state) else "READY")
    with open(os.path.join(root, "calls.jsonl"), "a") as log:
        log.write(json.dumps({{"argv": argv, "start": start, "end": time.time(), "code": code}}) + "\\n")
    sys.exit(code)
    ''')

SSH = textwrap.dedent('''\
    #!{python}
    import subprocess, sys

    args = sys.argv[1:]
    while args[0] == "-o":
        args = args[2:]
    host, command = args[0], " ".join(args[1:])
    sys.exit(subprocess.run(["bash", "-c", command]).returncode)
    ''')

SRUN = textwrap.dedent('''\
    #!{python}
    import os, signal, subprocess, sys

    program = sys.argv[sys.argv.index("--label") + 1:]
    n = int(os.environ["SLURM_NTASKS"])
    procs = [subprocess.Popen(program, env={{**os.environ, "SLURM_PROCID": str(i),
                                            "SLURM_LOCALID": str(i)}}) for i in range(n)]
    signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
    sys.exit(max(p.wait() for p in procs))
    ''')

SCRIPTS = {"gcloud": GCLOUD, "ssh": SSH, "srun": SRUN}


def install(bin_dir: Path, *names: str) -> Path:
    """Write the named stand-ins into ``bin_dir`` (put it first on PATH); returns ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = bin_dir / name
        path.write_text(SCRIPTS[name].format(python=sys.executable))
        path.chmod(0o755)
    return bin_dir


def tpu_calls(root: Path) -> list[dict]:
    """The fake gcloud's calls so far, in order."""
    path = root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
