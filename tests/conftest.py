"""Shared fixtures: real processes, real files, and a leak check after every test.

Helpers are handed out as fixtures (``wait_until``, ``run_cli``, ``make_cluster``...)
so test modules never import this file. Every cluster lives in the test's own
``tmp_path`` with ``$PORT`` = 0 (servers pick a free port), so tests never collide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

T = TypeVar("T")

#: A greeter taking its port from devcluster (``$PORT`` = 0 with ``-p 0``).
GREETER = "python -m devcluster.greeter --port $PORT"

#: How long a leftover gets to finish exiting (e.g. a PDEATHSIG already on its way)
#: before the leak check kills it and fails the test.
_LEAK_GRACE_S = 3.0


# -- waiting -------------------------------------------------------------------------

def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "",
               interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Polls because the things we wait on (a pid vanishing, a log line, a port
    answering) have no event a test can block on. Fails the test at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for "
                        f"{what or getattr(predicate, '__name__', 'condition')}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, 0.2)


@pytest.fixture(name="wait_until", scope="session")
def wait_until_fixture() -> Callable[..., Any]:
    """``wait_until(predicate, timeout=10, what="...")``: see :func:`wait_until`."""
    return wait_until


# -- processes -----------------------------------------------------------------------

def processes_under(root: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose cwd or command line is under ``root``."""
    root_s = str(root.resolve())
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = proc.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cwd = info["cwd"] or ""
        cmdline = info["cmdline"] or []
        if cwd == root_s or cwd.startswith(root_s + os.sep) or any(
                root_s in arg for arg in cmdline):
            found.append(proc)
    return found


def all_gone(pids: Sequence[int]) -> bool:
    """True when none of ``pids`` is a live (non-zombie) process."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def kill_all(procs: Sequence[psutil.Process]) -> None:
    """SIGKILL ``procs`` and their process groups; wait for them."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())}"
    except psutil.Error:
        return f"pid {proc.pid}"


@pytest.fixture(autouse=True)
def no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test using ``tmp_path``: no process may run under it (kill, then fail)."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")
    yield
    deadline = time.monotonic() + _LEAK_GRACE_S
    left = processes_under(tmp_path)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_under(tmp_path)
    if left:
        described = [_describe(p) for p in left]
        kill_all(left)
        pytest.fail("processes left behind by the test (now killed):\n  "
                    + "\n  ".join(described), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tail of every devcluster log under the test's tmp_path to a failure."""
    outcome = yield
    report = outcome.get_result()
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or tmp_path is None:
        return
    from devcluster.supervisor.logread import shown

    for log in sorted(Path(tmp_path).rglob("logs/*")):
        if log.name == "devcluster.log" and log.is_file():  # the merged view of the logs
            lines = shown(log.parent, None, 40)
        elif log.name == "supervisor.out" and log.is_file():
            lines = log.read_text(errors="replace").splitlines()[-40:]
        else:
            continue
        report.sections.append((f"devcluster {log.relative_to(tmp_path)}", "\n".join(lines)))


# -- the CLI -------------------------------------------------------------------------

def cli_env(**extra: str) -> dict[str, str]:
    """The environment for CLI subprocesses: no colour, no inherited DEVCLUSTER_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "DEVCLUSTER_HOME"}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", COLUMNS="200", **extra)
    return env


def devcluster_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "devcluster", *args]


def run_devcluster(*args: str, cwd: Path, timeout: float = 60.0,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``devcluster ARGS`` as a subprocess in ``cwd``; output captured as text."""
    return subprocess.run(devcluster_argv(*args), cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def devcluster_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``devcluster_cli("ps", cwd=DIR)``: :func:`run_devcluster`, for any scope."""
    return run_devcluster


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli("ps", "--json", cwd=..., timeout=...)``: the CLI in tmp_path by default."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_devcluster(*args, cwd=cwd or tmp_path, timeout=timeout, env=env)

    return run


@dataclass
class Foreground:
    """A foreground ``devcluster up`` whose output goes to a file we can poll."""

    proc: subprocess.Popen[bytes]
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, fragment: str, timeout: float = 20.0) -> str:
        def seen() -> bool:
            if self.proc.poll() is not None and fragment not in self.text():
                pytest.fail(f"`devcluster up` exited ({self.proc.returncode}) before "
                            f"printing {fragment!r}:\n{self.text()}")
            return fragment in self.text()

        wait_until(seen, timeout, f"{fragment!r} in the output of `devcluster up`")
        return self.text()


@pytest.fixture
def foreground(tmp_path: Path) -> Iterator[Callable[..., Foreground]]:
    """Start ``devcluster up ARGS`` in the foreground (its own session); killed at teardown."""
    started: list[Foreground] = []

    def start(*args: str, cwd: Path | None = None) -> Foreground:
        out_path = tmp_path / f"up-{len(started)}.out"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(devcluster_argv("up", *args), cwd=cwd or tmp_path,
                                    env=cli_env(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        fg = Foreground(proc, out_path)
        started.append(fg)
        return fg

    yield start
    for fg in started:
        if fg.proc.poll() is None:
            fg.proc.send_signal(signal.SIGINT)
            try:
                fg.proc.wait(15)
            except subprocess.TimeoutExpired:
                fg.proc.kill()
                fg.proc.wait()


# -- clusters ------------------------------------------------------------------------

@pytest.fixture
def write_procfile(tmp_path: Path) -> Callable[..., Path]:
    """``write_procfile("web: cmd", "api: cmd", directory=...)`` -> the Procfile's path."""

    def write(*lines: str, directory: Path | None = None) -> Path:
        directory = directory or tmp_path
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "Procfile"
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    return write


@pytest.fixture
def make_cluster(write_procfile: Callable[..., Path]) -> Iterator[Callable[..., Any]]:
    """``make_cluster(lines, scale=..., **Cluster kwargs)``: a started Cluster on port 0.

    Every cluster is taken down at teardown, also when the test failed.
    """
    from devcluster.api import Cluster

    clusters: list[Cluster] = []

    def make(lines: Sequence[str] = (f"greeter: {GREETER}",), *, start: bool = True,
             **kwargs: Any) -> Cluster:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("grace", 1.0)
        kwargs.setdefault("ready_timeout", 20.0)
        cluster = Cluster(write_procfile(*lines), **kwargs)
        clusters.append(cluster)
        if start:
            cluster.up()
        return cluster

    yield make
    errors = []
    for cluster in clusters:  # every one, even if taking down an earlier one failed
        try:
            cluster.down()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


# -- gRPC ----------------------------------------------------------------------------

def say_hello(address: str, name: str = "test", delay_ms: int | None = None,
              timeout: float = 10.0) -> tuple[str, str | None]:
    """One SayHello to ``address``: (reply message, ``devcluster-instance`` header)."""
    import grpc

    from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

    metadata = (("devcluster-delay-ms", str(delay_ms)),) if delay_ms is not None else None
    with grpc.insecure_channel(address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply, call = stub.SayHello.with_call(helloworld_pb2.HelloRequest(name=name),
                                              metadata=metadata, timeout=timeout)
        header = dict(call.initial_metadata()).get("devcluster-instance")
    return reply.message, header


@pytest.fixture(name="say_hello", scope="session")
def say_hello_fixture() -> Callable[..., tuple[str, str | None]]:
    """``say_hello(address, name, delay_ms=None)`` -> (message, instance header)."""
    return say_hello


@pytest.fixture(name="processes_under", scope="session")
def processes_under_fixture() -> Callable[[Path], list[psutil.Process]]:
    return processes_under


@pytest.fixture(name="all_gone", scope="session")
def all_gone_fixture() -> Callable[[Sequence[int]], bool]:
    return all_gone
