"""One trainer per run directory: an exclusive lock naming its holder (host and PID).

Two trainers in one directory would interleave metrics, write two event files and race each other's
checkpoint deletions. ``RunLock`` is taken by the trainer (process 0 of a multi-host run) before it
touches the directory:

- Local directories (and NFS): ``flock`` on ``run.lock``. The kernel drops the lock when its
  process dies, however it dies, so a lock left by a dead process is simply taken over; the file
  keeps the holder's host and PID for the message.
- Object stores (``gs://``): no locks exist, so ``run.lock`` is an object holding the holder's
  host, PID, a random token and a heartbeat time that a background thread renews every
  ``heartbeat_seconds``. A lock is stale, and taken over, when its heartbeat is older than
  ``stale_seconds`` (the holder died or lost its storage), or at once when it names a PID of this
  host that no longer runs. After writing its own lock the taker reads it back, so of two
  simultaneous takers only one proceeds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from elm_jax.common_types import LOCK_FILE
from elm_jax.errors import TrainingError
from elm_jax.storage import is_uri, write_atomic

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` holds the directory's lock, or raises ``TrainingError`` naming
    the process that holds it."""

    def __init__(self, run_dir: epath.Path, *, stale_seconds: float = 600.0,
                 heartbeat_seconds: float = 60.0, settle_seconds: float = 1.0):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.settle_seconds = settle_seconds
        self._fd: int | None = None
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _me(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token,
                "time": time.time()}

    def _busy(self, holder: dict[str, Any], how: str) -> TrainingError:
        return TrainingError(
            f"{self.run_dir} is in use by process {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} ({how}; lock {self.path}); wait for that run to end or "
            "stop it, or choose another train.run_dir")

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if is_uri(self.path):
                self._acquire_object()
            else:
                self._acquire_flock()
        except OSError as err:
            raise TrainingError(f"cannot take the lock {self.path} ({type(err).__name__}: {err}); "
                                "train.run_dir must be a directory this user can write") from None

    def _acquire_flock(self) -> None:
        import fcntl

        fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_fd(fd)
            os.close(fd)
            raise self._busy(holder, "it holds the lock until it exits") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._me()).encode(), 0)
        self._fd = fd

    @staticmethod
    def _read_fd(fd: int) -> dict[str, Any]:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}

    def _read_object(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a dying holder: nobody's
            return {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("time", 0)) > self.stale_seconds

    def _acquire_object(self) -> None:
        holder = self._read_object()
        if holder and not self._stale(holder):
            raise self._busy(holder, f"heartbeat {time.time() - holder['time']:.0f} s ago, stale "
                                     f"after {self.stale_seconds:.0f} s")
        if holder:
            log.warning("taking over the stale lock of process %s on %s in %s", holder.get("pid"),
                        holder.get("host"), self.run_dir)
        write_atomic(self.path, json.dumps(self._me()))
        time.sleep(self.settle_seconds)  # a racing taker's write lands within this
        holder = self._read_object() or {}
        if holder.get("token") != self._token:
            raise self._busy(holder, "it took the lock at the same moment")
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                holder = self._read_object() or {}
                if holder.get("token") != self._token:
                    log.error("%s was taken over by process %s on %s: another trainer may be "
                              "writing to this run directory", self.path, holder.get("pid"),
                              holder.get("host"))
                    return
                write_atomic(self.path, json.dumps(self._me()))
            except OSError as err:  # storage hiccup: try again at the next beat
                log.warning("could not renew %s (%s)", self.path, err)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file keeps the last holder for messages
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if (self._read_object() or {}).get("token") == self._token:
                self.path.unlink()
