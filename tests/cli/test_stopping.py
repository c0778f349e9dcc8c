"""Long-running commands stop on SIGINT and SIGTERM, also when started as a script's
background job (SIGINT inherited as ignored: ``kill -INT $!`` must still stop them), and
Ctrl-C during ``up -d`` says that the cluster keeps running and how to stop it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster import defaults
from tests.conftest import cli_env

#: Exec devcluster with SIGINT ignored, as a non-interactive shell starts a `&` job.
IGNORING_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.executable, [sys.executable, '-m', 'devcluster', *sys.argv[1:]])")


class Running:
    """A devcluster command in the background, its output in a file we can poll."""

    def __init__(self, args: tuple[str, ...], cwd: Path, ignore_sigint: bool) -> None:
        self.output = cwd / f"out-{time.monotonic_ns()}.txt"
        argv = ([sys.executable, "-c", IGNORING_SIGINT, *args] if ignore_sigint
                else [sys.executable, "-m", "devcluster", *args])
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=cli_env(), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, fragment: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while fragment not in self.text():
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.text()}"
            assert time.monotonic() < deadline, f"no {fragment!r} in {timeout} s: {self.text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(*args: str, ignore_sigint: bool = True) -> Running:
        started.append(Running(args, tmp_path, ignore_sigint))
        return started[-1]

    yield run
    for running in started:
        running.stop()


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A state dir with a registry, a merged log and a timeline, as a cluster leaves them."""
    from devcluster.registry import FileRegistry, Record

    (tmp_path / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
    state = defaults.state_dir(tmp_path / "Procfile")
    registry = FileRegistry(state)
    registry.register(Record("greeter", "greeter", "127.0.0.1:1"))  # nothing listens there
    registry.close()
    where = defaults.layout(state)
    where.logs.mkdir(parents=True, exist_ok=True)
    where.log(None).write_text("12:00:00.000 system | hello from the log\n")
    from devcluster.events import Event, EventKind, EventLog

    log = EventLog(state)
    log.append(Event(time.time(), EventKind.STARTED, "greeter", new=4242, detail="an event"))
    log.close()
    assert (state / "registry.json").exists()
    return tmp_path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_console_stops_on_a_signal_with_sigint_ignored(
        sig: signal.Signals, registry_dir: Path, start: Callable[..., Running]) -> None:
    console = start("console")
    console.wait_for("Ctrl-C stops the console")
    console.proc.send_signal(sig)
    assert console.proc.wait(15) == 130  # interrupted, and promptly


@pytest.mark.parametrize("args,ready", [(("logs", "-f", "-n", "5"), "hello from the log"),
                                        (("events", "-f"), "greeter")], ids=["logs -f", "events -f"])
def test_following_stops_on_sigint_with_sigint_ignored(
        args: tuple[str, ...], ready: str, registry_dir: Path,
        start: Callable[..., Running]) -> None:
    follower = start(*args)
    follower.wait_for(ready)  # what was there is printed: it follows now
    follower.proc.send_signal(signal.SIGINT)
    assert follower.proc.wait(15) in (0, 130)
    assert "Traceback" not in follower.text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_call_with_an_interval_stops_on_a_signal_with_sigint_ignored(
        sig: signal.Signals, registry_dir: Path, start: Callable[..., Running]) -> None:
    """Issue 26 item 14: every command heeds SIGINT (the runner restores it), not only
    those that were fixed one by one; `call -n N --interval S` ran on after kill -INT."""
    proto = Path(__file__).parents[1] / "protos" / "echo.proto"
    caller = start("call", "echo.Echo/Say", "--proto", str(proto), "-n", "1000",
                   "--interval", "0.2", "--timeout", "0.2")
    caller.wait_for("  2  ")  # calls are being made (each fails: nothing listens)
    caller.proc.send_signal(sig)
    assert caller.proc.wait(15) == 130
    assert "Traceback" not in caller.text()


def test_ctrl_c_during_up_detached_says_the_cluster_keeps_running(
        tmp_path: Path, start: Callable[..., Running],
        devcluster_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    # A server that never serves keeps `up -d` waiting for it.
    (tmp_path / "Procfile").write_text("slow: python -c \"import time; time.sleep(120)\"\n")
    up = start("up", "-d", "-p", "0", "--ready-timeout", "60", ignore_sigint=False)
    from devcluster.statedir import running_pid

    state = defaults.state_dir(tmp_path / "Procfile")
    try:
        deadline = time.monotonic() + 30
        # The supervisor holds its lock: it runs. `up -d` takes the lock first and hands
        # it over (its own pid in the file until then): a Ctrl-C before the hand-over is
        # another case (the daemon may not have its request yet).
        while running_pid(state) in (None, -1, up.proc.pid):
            assert up.proc.poll() is None, up.text()
            assert time.monotonic() < deadline, up.text()
            time.sleep(0.05)
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(15) == 130
        lines = [line for line in up.text().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert "keeps running" in lines[0] and "`devcluster down`" in lines[0]
        assert devcluster_cli("ps", cwd=tmp_path).returncode == 0  # it does
    finally:
        assert devcluster_cli("down", "--grace", "1", cwd=tmp_path).returncode == 0


#: Run devcluster with a real SIGINT arriving while its command line is being imported.
SIGINT_WHILE_LOADING = """
import importlib.abc, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "devcluster.cli.spec":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the import begins
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["devcluster", "ps"]
from devcluster.cli.entry import main
main()
"""


def test_ctrl_c_while_the_command_line_loads_is_quiet(tmp_path: Path) -> None:
    """Ctrl-C in the first tenth of a second of any command (its imports) printed a
    KeyboardInterrupt traceback; it is exit 130 and nothing else, as later on."""
    result = subprocess.run([sys.executable, "-c", SIGINT_WHILE_LOADING], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "" and result.stdout == ""
