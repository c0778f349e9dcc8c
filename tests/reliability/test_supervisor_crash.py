"""The supervisor SIGKILLed mid-run: no handler runs, no cleanup, no `down`.

- Every process of the cluster is gone within 2 s: the instances (PDEATHSIG), the
  grandchildren a ``sh -c`` line forked (the orphan watchdog kills their groups) and
  the watchdog itself.
- The control socket file left behind does not confuse ``ps``: one line saying no
  cluster runs, exit 1.
- The next ``devcluster up -d`` in the same directory reports the stale state it
  cleaned and starts normally.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.control.plane import ControlClient, as_dict
from devcluster.statedir import layout

GREETER = "python -m devcluster.greeter --port $PORT"
#: A shell line: sh leads the group; the greeter (in the background) and `sleep` are
#: its children, the grandchildren of the supervisor, out of PDEATHSIG's reach.
SHELL_LINE = f"{GREETER} & sleep 1000 && echo x"
PROCFILE = (f"greeter: {GREETER}", f"tree: {SHELL_LINE}")
INSTANCES = {"greeter.1", "greeter.2", "tree"}


@dataclass
class Crash:
    """A cluster whose supervisor was SIGKILLed, and what ran before."""

    state_dir: Path
    supervisor: int
    rows: dict[str, dict[str, Any]]
    victims: dict[int, str]
    """pid -> command line of every process the supervisor had started, at any depth."""
    gone_in: float


def _cmdline(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(proc.cmdline())
    return "?"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _socket_target(path: Path) -> Path | None:
    """The socket file ``path`` names (itself, or a symlink's target for long paths)."""
    if path.is_symlink():
        return Path(os.readlink(path))
    return path if path.exists() else None


def _dead_socket(path: Path) -> bool:
    """True if ``path`` is a unix socket nobody listens on."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


@pytest.fixture
def crash(tmp_path: Path, write_procfile: Callable[..., Path],
          run_cli: Callable[..., Any], wait_until: Callable[..., Any]) -> Iterator[Crash]:
    write_procfile(*PROCFILE)
    up = run_cli("up", "-d", "--port", "0", "--grace", "1", "--scale", "greeter=2")
    assert up.returncode == 0, up.stdout + up.stderr
    state_dir = tmp_path / ".devcluster"
    supervisor = int(layout(state_dir).lock.read_text())
    try:
        with ControlClient(state_dir) as control:
            reply = control.ps()
        assert reply.supervisor_pid == supervisor, "the lock file names another supervisor"
        rows = {i.name: as_dict(i) for i in reply.instances}
        assert set(rows) == INSTANCES and all(r["state"] == "serving" for r in rows.values())
        descendants = psutil.Process(supervisor).children(recursive=True)
        victims = {p.pid: _cmdline(p) for p in descendants}
        commands = list(victims.values())
        # What the test is about must really be there: grandchildren and the watchdog.
        assert any(c.startswith("sleep 1000") for c in commands), commands
        assert sum(c.startswith("python -m devcluster.greeter") for c in commands) == 3, commands
        assert any("devcluster.supervisor.watchdog" in c for c in commands), commands
        socket_target = _socket_target(layout(state_dir).socket)
    finally:
        os.kill(supervisor, signal.SIGKILL)  # also when a check above failed
        killed = time.monotonic()
    wait_until(lambda: not _alive(supervisor), 2, "the supervisor to die")
    try:
        wait_until(lambda: not any(map(_alive, victims)), 2.0,
                   "every process of the cluster to be gone within 2 s of SIGKILL")
        gone_in = time.monotonic() - killed
        yield Crash(state_dir, supervisor, rows, victims, gone_in)
    finally:
        # The dead supervisor's socket, when it was bound outside tmp_path (long paths
        # bind in /tmp), unless a new supervisor listens there now.
        if socket_target is not None and tmp_path not in socket_target.parents \
                and _dead_socket(socket_target):
            socket_target.unlink()


def test_every_process_dies_with_the_supervisor(crash: Crash, tmp_path: Path,
                                                processes_under: Callable[[Path], list[Any]],
                                                ) -> None:
    assert crash.gone_in < 2.0
    left = [f"{p.pid}: {_cmdline(p)}" for p in processes_under(tmp_path)]
    assert not left, left
    print(f"{len(crash.victims)} processes gone {crash.gone_in * 1000:.0f} ms after the "
          "supervisor's SIGKILL")


def test_a_dead_control_socket_does_not_confuse_ps(crash: Crash,
                                                   run_cli: Callable[..., Any]) -> None:
    sock = layout(crash.state_dir).socket
    assert sock.exists() or sock.is_symlink(), "the crashed run left no socket to test with"
    for args in (("ps",), ("ps", "--json")):
        result = run_cli(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no cluster running" in lines[0], result.stderr
        assert "Traceback" not in result.stderr and not result.stdout.strip()


def test_next_up_reports_the_stale_state_and_starts_normally(
        crash: Crash, run_cli: Callable[..., Any], tmp_path: Path,
        wait_until: Callable[..., Any], processes_under: Callable[[Path], list[Any]]) -> None:
    up = run_cli("up", "-d", "--port", "0", "--grace", "1", "--scale", "greeter=2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Traceback" not in up.stdout + up.stderr
        logs = run_cli("logs", "-n", "500")
        told = [line for line in (up.stdout + up.stderr + logs.stdout).splitlines()
                if "stale" in line]
        assert told, f"no word of the stale state:\n{up.stdout}{up.stderr}{logs.stdout}"
        assert all(name in told[0] for name in INSTANCES), told
        print(f"the next `up -d` said: {told[0]}")
        with ControlClient(crash.state_dir) as control:
            reply = control.ps()
        assert reply.supervisor_pid != crash.supervisor
        rows = {i.name: as_dict(i) for i in reply.instances}
        assert {n: r["state"] for n, r in rows.items()} == {n: "serving" for n in INSTANCES}
        assert not {r["pid"] for r in rows.values()} & set(crash.victims)
        assert {n: r["restarts"] for n, r in rows.items()} == {n: 0 for n in INSTANCES}
    finally:
        down = run_cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    wait_until(lambda: not processes_under(tmp_path), 5, "every process to be gone after down")
