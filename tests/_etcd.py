"""A real etcd server for tests and benches: free loopback ports, a private data dir.

    with running_etcd(tmp_path) as server:        # ~0.5 s to start, ~0.1 s to stop
        reg = EtcdRegistry(server.url("/my-test"))

The server dies with the process that started it (PDEATHSIG), so even a pytest run
that is SIGKILLed leaves no etcd behind. In tests, :func:`require_etcd` skips with a
reason when etcd or the client is missing, and fails instead when ``CI=true``: the
etcd backend must never go untested in CI by accident.

This module does not import pytest at import time, so benches can use it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import psutil

from devcluster.supervisor.process import with_pdeathsig

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
#: Pids of the servers this process runs, for leak checks that must not count them.
SERVER_PIDS: set[int] = set()


@dataclass
class EtcdServer:
    """One running etcd member (a one-node cluster)."""

    proc: subprocess.Popen[bytes]
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    argv: list[str] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the client API."""
        return f"{HOST}:{self.client_port}"

    def url(self, prefix: str = "") -> str:
        """The registry URL for ``prefix`` (e.g. ``/test-abc``) on this server."""
        return f"etcd://{self.address}{prefix}"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines etcd logged (start-up failures say why here)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        SERVER_PIDS.discard(self.proc.pid)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop, then start again on the same ports and data (keys and leases survive)."""
        self.stop()
        self.proc = _spawn(self.argv, self.log_path)
        self._stopped = False
        if not _wait_healthy(self, time.monotonic() + timeout):
            self.stop()
            raise RuntimeError(f"etcd did not come back within {timeout:g} s:\n{self.log_tail()}")


def etcd_binary() -> str | None:
    """Path of the ``etcd`` server binary, or None."""
    return shutil.which("etcd")


def missing_reason() -> str | None:
    """Why the etcd tests cannot run here, or None if they can."""
    if etcd_binary() is None:
        return ("etcd binary not found on PATH; install it with "
                "`apt-get install -y etcd-server` (CI does)")
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        return "etcd client missing; install it with `pip install -e '.[etcd]'`"
    return None


def require_etcd() -> None:
    """Skip the calling test when etcd is unavailable, or fail it when ``CI=true``."""
    import pytest

    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the etcd tests must run in CI, not be skipped)",
                    pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    # /health answers {"health":"true"} once the member has a leader and serves.
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=0.5) as resp:
            return b'"true"' in resp.read()
    except OSError:
        return False


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    wrapped, preexec = with_pdeathsig(argv)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                preexec_fn=cast("Callable[[], object] | None", preexec))
    SERVER_PIDS.add(proc.pid)
    return proc


def _wait_healthy(server: EtcdServer, deadline: float) -> bool:
    """True once ``server`` answers /health; False if it exits or the deadline passes."""
    while server.proc.poll() is None and time.monotonic() < deadline:
        if _healthy(server.client_port):
            return True
        time.sleep(0.05)
    return False


def start_etcd(workdir: Path, *, timeout: float = START_TIMEOUT_S) -> EtcdServer:
    """Start a one-member etcd with its data under ``workdir``; return once it is healthy.

    Ports are picked free and handed to etcd, which can lose them to another process
    in between: a server that exits during start-up is retried on new ports (3 tries).
    """
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd binary not found on PATH (apt-get install -y etcd-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    for attempt in range(3):
        client_port, peer_port = _free_port(), _free_port()
        data_dir = workdir / f"etcd-data-{attempt}"
        log_path = workdir / f"etcd-{attempt}.log"
        client_url, peer_url = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
        argv = [
            binary, "--name", "devcluster-test", "--data-dir", str(data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"devcluster-test={peer_url}",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]
        server = EtcdServer(_spawn(argv, log_path), client_port, peer_port, data_dir, log_path,
                            argv)
        if _wait_healthy(server, deadline):
            return server
        server.stop()
        if time.monotonic() >= deadline:
            raise RuntimeError(f"etcd did not become healthy within {timeout:g} s:\n"
                               f"{server.log_tail()}")
        # Exited early: most likely a port taken meanwhile; try new ones.
    raise RuntimeError(f"etcd kept exiting during start-up:\n{server.log_tail()}")


@contextlib.contextmanager
def running_etcd(workdir: Path, *, timeout: float = START_TIMEOUT_S) -> Iterator[EtcdServer]:
    """:func:`start_etcd` as a context manager: the server is stopped on exit."""
    server = start_etcd(workdir, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def children_except_etcd() -> list[psutil.Process]:
    """Live child processes of this process, leaving out the etcd servers it runs."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in SERVER_PIDS]
