"""One cluster for a whole pytest-xdist run, shared by every worker.

A run's directory ``$TMPDIR/devcluster-xdist-<uid>/<run id>/`` (the run id is
xdist's ``testrunuid``) holds:

* ``lock`` — an fcntl lock: starting, attaching, leaving and stopping happen under it;
* ``controller`` — the pid (and start time) of the xdist controller;
* ``users/<pid>`` — one file per worker of the run (its start time inside);
* ``<key>/`` — the state dir of each shared cluster, keyed by its options.

The first worker to need a cluster starts it (not tied to its own life: a worker
that crashes does not take it down); the others attach. The last worker of the run
to finish (no other live worker left) stops every cluster of the run. The controller stops whatever is
still running at the end of the run (all workers crashed, Ctrl-C), and a later
run sweeps the directory of a run whose controller was killed outright.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from devcluster.pytest_plugin.leaks import Leak, find_leaks, same_process, wait_gone
from devcluster.statedir import running_pid

#: Seconds a supervisor gets to stop beyond its grace before it is SIGKILLed.
STOP_MARGIN = 10.0


def runs_root() -> Path:
    """Where runs' directories live: short (a control socket path has ~100 bytes)."""
    return Path(tempfile.gettempdir()) / f"devcluster-xdist-{os.getuid()}"


def options_key(options: Mapping[str, Any]) -> str:
    """A short stable name for a cluster's options (one shared cluster per set)."""
    text = json.dumps({k: options[k] for k in sorted(options)}, default=str, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _create_time(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return None


def _alive_from_file(path: Path) -> bool:
    """The pid named by ``path`` (its name or content) is still the process it recorded."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return same_process(int(data["pid"]), data.get("created")) is not None


def _mark(path: Path, pid: int) -> None:
    path.write_text(json.dumps({"pid": pid, "created": _create_time(pid)}))


class SharedRun:
    """The shared clusters of one xdist run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"SharedRun({str(self.root)!r})"

    @classmethod
    def of(cls, testrunuid: str) -> SharedRun:
        return cls(runs_root() / testrunuid[:12])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (blocking: a worker starting the cluster holds it)."""
        (self.root / "users").mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def state_dir(self, key: str) -> Path:
        return self.root / key

    def mark_controller(self) -> None:
        (self.root / "users").mkdir(parents=True, exist_ok=True, mode=0o700)
        _mark(self.root / "controller", os.getpid())

    def join(self) -> None:
        """Register this process as a user (call under the lock)."""
        _mark(self.root / "users" / str(os.getpid()), os.getpid())

    def leave(self, grace: float) -> None:
        """Deregister this process; the last live user stops every cluster of the run."""
        with self.locked():
            with contextlib.suppress(FileNotFoundError):
                (self.root / "users" / str(os.getpid())).unlink()
            if not self.live_users():
                self.stop_all(grace)

    def live_users(self) -> list[int]:
        users = self.root / "users"
        return [int(p.name) for p in users.glob("*") if p.name.isdigit() and _alive_from_file(p)]

    def state_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*") if p.is_dir() and p.name != "users")

    def stop_all(self, grace: float) -> None:
        """Stop every cluster of the run that still runs (call under the lock)."""
        for state_dir in self.state_dirs():
            stop_cluster(state_dir, grace)

    def finish(self, grace: float) -> list[Leak]:
        """The controller's end of the run: stop what runs, find and return leaks, clean up."""
        if not self.root.exists():
            return []
        with self.locked():
            tracked = self._recorded_pids()
            self.stop_all(grace)
            leaks = find_leaks(tracked, _mentioning(str(self.root)))
            shutil.rmtree(self.root, ignore_errors=True)
        return leaks

    def _recorded_pids(self) -> dict[int, tuple[float | None, str]]:
        """Supervisor and instance pids of the run's clusters, as their registries say."""
        from devcluster.registry import FileRegistry

        pids: dict[int, tuple[float | None, str]] = {}
        for state_dir in self.state_dirs():
            with contextlib.suppress(Exception):  # a registry never written: nothing started
                snap = FileRegistry(state_dir, check_liveness=False).snapshot()
                for rec in snap.records.values():
                    if rec.pid:
                        pids[rec.pid] = (rec.started_at, f"instance {rec.name} of the shared "
                                         f"cluster in {state_dir}")
        return pids


def _mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``text`` (a run's supervisors)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.pid != os.getpid() and any(text in a for a in proc.info["cmdline"] or []):
                found.append(proc)
    return found


def stop_cluster(state_dir: Path, grace: float) -> None:
    """Stop the supervisor of ``state_dir`` gracefully, or SIGKILL it when it hangs."""
    from devcluster.api import control_client
    from devcluster.errors import DevclusterError

    pid = running_pid(state_dir)
    if pid is None or pid <= 0:
        return
    created = _create_time(pid)
    with contextlib.suppress(DevclusterError, OSError), control_client(state_dir) as control:
        control.down(grace)
    if not _wait_gone(pid, created, grace + STOP_MARGIN):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # its instances die by PDEATHSIG and the watchdog
        _wait_gone(pid, created, 5.0)


def _wait_gone(pid: int, created: float | None, timeout: float) -> bool:
    """Wait until ``pid`` is gone (the worker that started a shared cluster is its parent)."""
    proc = same_process(pid, created)
    return proc is None or not wait_gone([proc], timeout)


def sweep_stale(keep: SharedRun) -> None:
    """Stop and remove the runs whose controller is gone (a run killed outright)."""
    root = runs_root()
    if not root.is_dir():
        return
    for run_dir in root.iterdir():
        run = SharedRun(run_dir)
        marker = run_dir / "controller"
        if run_dir == keep.root or not marker.exists() or _alive_from_file(marker):
            continue
        with contextlib.suppress(OSError):
            with run.locked():
                if run.live_users():
                    continue
                run.stop_all(grace=1.0)
                for proc in _mentioning(str(run_dir)):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            shutil.rmtree(run_dir, ignore_errors=True)
