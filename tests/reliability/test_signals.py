"""Signals to a foreground ``devcluster up``, sent as a terminal or an init system would.

- SIGINT twice in a row (like docker compose): the second one SIGKILLs every instance
  at once, even one that ignores SIGINT and a grace period of 30 s; nothing is left.
- SIGTERM behaves as SIGINT: a graceful stop, exit 0, every process gone (and twice
  in a row, it escalates the same way).
- SIGHUP re-reads the Procfile: added types start, removed ones stop, changed commands
  restart with a new pid, unchanged ones keep theirs; an invalid Procfile changes nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.control.plane import ControlClient, as_dict
from devcluster.registry import FileRegistry

GREETER = "python -m devcluster.greeter --port $PORT"

#: A gRPC server (health service only) that ignores SIGINT: only SIGKILL ends it.
#: A plain command line (no shell syntax), so it is the instance's leader itself and a
#: shell in between cannot die of the SIGINT on its behalf.
STUBBORN_PY = """\
import os, signal, time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc

signal.signal(signal.SIGINT, signal.SIG_IGN)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
print(f"up on {port}, ignoring SIGINT", flush=True)
time.sleep(1000)
"""

#: With this grace only the escalation can explain a quick exit.
LONG_GRACE = "30"


def control_ps(state_dir: Path) -> dict[str, dict[str, Any]]:
    """``ps --json`` rows by name, in-process (a CLI run per poll costs ~0.5 s)."""
    with ControlClient(state_dir) as control:
        return {i.name: as_dict(i) for i in control.ps().instances}


def tree_pids(pids: list[int]) -> set[int]:
    """``pids`` and every descendant of them."""
    found = set(pids)
    for pid in pids:
        try:
            found.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def all_serving(state_dir: Path, names: set[str]) -> dict[str, dict[str, Any]] | None:
    rows = control_ps(state_dir)
    if set(rows) == names and all(r["state"] == "serving" for r in rows.values()):
        return rows
    return None


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / ".devcluster"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_second_signal_sigkills_every_instance_at_once(
        sig: signal.Signals, tmp_path: Path, state_dir: Path, write_procfile: Callable[..., Path],
        foreground: Callable[..., Any], wait_until: Callable[..., Any],
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    (tmp_path / "stubborn.py").write_text(STUBBORN_PY)
    write_procfile(f"greeter: {GREETER}", "stubborn: python stubborn.py")
    up = foreground("--port", "0", "--grace", LONG_GRACE, "--scale", "greeter=2")
    up.wait_for("ready: 3/3 serving")
    rows = control_ps(state_dir)
    victims = tree_pids([r["pid"] for r in rows.values()])
    stubborn = rows["stubborn"]["pid"]

    up.proc.send_signal(sig)
    up.wait_for(f"shutting down ({sig.name})")
    # The greeters stop by themselves; the stubborn one ignores SIGINT and would get
    # 30 s before its SIGKILL.
    wait_until(lambda: not is_alive(rows["greeter.1"]["pid"])
               and not is_alive(rows["greeter.2"]["pid"]), 10, "the greeters to stop")
    assert is_alive(stubborn), "the stubborn instance died of the first signal"

    second = time.monotonic()
    up.proc.send_signal(sig)
    wait_until(lambda: not any(map(is_alive, victims)), 2.0,
               f"every instance to die within 2 s of the second {sig.name}")
    killed_in = time.monotonic() - second
    code = up.proc.wait(10)
    exited_in = time.monotonic() - second
    text = up.text()
    assert "forced shutdown" in text, text
    assert "Traceback" not in text, text
    assert code == 0, f"exit {code}:\n{text}"
    assert exited_in < 5.0, f"`up` took {exited_in:.1f} s to exit after the second {sig.name}"
    assert not processes_under(tmp_path), "orphans left after the forced shutdown"
    print(f"second {sig.name}: instances gone in {killed_in * 1000:.0f} ms, "
          f"`up` exited in {exited_in * 1000:.0f} ms")


def test_sigterm_behaves_as_sigint(
        tmp_path: Path, state_dir: Path, write_procfile: Callable[..., Path],
        foreground: Callable[..., Any], wait_until: Callable[..., Any],
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    write_procfile(f"greeter: {GREETER}")
    up = foreground("--port", "0", "--grace", "5", "--scale", "greeter=2")
    up.wait_for("ready: 2/2 serving")
    rows = control_ps(state_dir)
    victims = tree_pids([r["pid"] for r in rows.values()])

    up.proc.send_signal(signal.SIGTERM)
    code = up.proc.wait(15)
    text = up.text()
    assert code == 0, f"exit {code}:\n{text}"
    assert "shutting down (SIGTERM)" in text, text
    assert "forced shutdown" not in text and "SIGKILL" not in text, text
    assert "Traceback" not in text, text
    for name in rows:  # each greeter got SIGINT and stopped by itself, as with Ctrl-C
        assert f"{name} stopping (grace" in text and f"{name} stopped" in text, text
    wait_until(lambda: not any(map(is_alive, victims)), 3, "every instance to be gone")
    assert not processes_under(tmp_path)
    records = FileRegistry(state_dir, check_liveness=False).snapshot().records
    assert {n: r.state.value for n, r in records.items()} == {n: "stopped" for n in rows}


PROCFILE_BEFORE = (f"keep: {GREETER}", f"change: {GREETER}", f"remove: {GREETER}")


def test_sighup_reloads_the_procfile(
        tmp_path: Path, state_dir: Path, write_procfile: Callable[..., Path],
        foreground: Callable[..., Any], wait_until: Callable[..., Any]) -> None:
    write_procfile(*PROCFILE_BEFORE)
    up = foreground("--port", "0", "--grace", "2")
    up.wait_for("ready: 3/3 serving")
    before = control_ps(state_dir)

    write_procfile(f"keep: {GREETER}", f"change: {GREETER} --name changed", f"add: {GREETER}")
    up.proc.send_signal(signal.SIGHUP)
    up.wait_for("reload: 1 added, 1 removed, 1 changed")
    after = wait_until(lambda: all_serving(state_dir, {"keep", "change", "add"}), 20,
                       "keep, change and add serving after the reload")

    assert after["keep"]["pid"] == before["keep"]["pid"], "an unchanged instance restarted"
    assert after["change"]["pid"] != before["change"]["pid"], "a changed command kept its pid"
    assert after["change"]["restarts"] == before["change"]["restarts"] + 1
    wait_until(lambda: not is_alive(before["remove"]["pid"])
               and not is_alive(before["change"]["pid"]), 5,
               "the removed and the replaced process to be gone")
    records = FileRegistry(state_dir).snapshot().records
    assert set(records) == {"keep", "change", "add"}, "the registry still lists a removed type"
    assert {r.pid for r in records.values()} == {r["pid"] for r in after.values()}
    assert "Traceback" not in up.text()


def test_sighup_with_an_invalid_procfile_changes_nothing(
        tmp_path: Path, state_dir: Path, write_procfile: Callable[..., Path],
        foreground: Callable[..., Any], wait_until: Callable[..., Any],
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    procfile = write_procfile(*PROCFILE_BEFORE)
    up = foreground("--port", "0", "--grace", "2")
    up.wait_for("ready: 3/3 serving")
    before = control_ps(state_dir)

    invalid = "keep: python -m devcluster.greeter --port $PORT\nthis line has no colon\n"
    procfile.write_text(invalid)
    up.proc.send_signal(signal.SIGHUP)
    text = up.wait_for("reload refused")
    refusal = next(line for line in text.splitlines() if "reload refused" in line)
    assert "Procfile:2" in refusal and "malformed line" in refusal, refusal

    after = control_ps(state_dir)
    assert {n: (r["state"], r["pid"]) for n, r in after.items()} == \
        {n: ("serving", r["pid"]) for n, r in before.items()}
    assert procfile.read_text() == invalid, "devcluster changed the user's Procfile"
    # Still a healthy cluster: it stops as usual.
    victims = tree_pids([r["pid"] for r in after.values()])
    os.kill(up.proc.pid, signal.SIGTERM)
    assert up.proc.wait(15) == 0, up.text()
    wait_until(lambda: not any(map(is_alive, victims)), 3, "every instance to be gone")
    assert not processes_under(tmp_path)
