"""devcluster's supervisor beside honcho, in the same run (issue 7, scenarios 1, 2, 8).

``python -m bench.supervisor [--sizes 3,10,30] [--runs 3] [--idle 10]``

* Time to ready: ``devcluster up`` (foreground) and ``honcho start``, each until every
  greeter answers a SayHello (the same criterion for both; devcluster also health-checks),
  plus ``devcluster up -d`` until it returns (serving, health-checked).
* The floor: the same greeters started by a plain ``Popen`` loop (no shell, no
  supervisor), polled until all answer: what nothing that execs an interpreter per
  instance can beat by much (issue 21).
* Shutdown: SIGINT until every process of the tree is gone.
* Overhead: idle CPU% of the supervisor over ``--idle`` seconds, RSS and USS of the
  supervisor (honcho: the honcho process and its helpers), and the latency of the
  control calls ``ps`` and ``weight`` (in-process, and as CLI commands).

Not a test: figures depend on the machine. Ports come from a fresh free range per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psutil

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

PY = sys.executable
BIN = Path(PY).parent


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections' ports)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_base(n: int) -> int:
    """A base port with ``n`` free ports after it (checked by binding each), below the
    ephemeral range: there, an outgoing connection (a health check, the bench's own
    polling) could take a greeter's port between this check and its bind, and the run
    would never be ready (one N=30 run of a full bench did just that).

    The search starts at a random place: two benches on one machine would otherwise
    find the same free range at the same moment."""
    top = max(_ephemeral_low() - n, 11000)
    start = random.randrange(10000, top, 1000)
    for base in [*range(start, top, 1000), *range(10000, start, 1000)]:
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


#: Readiness polling must not wait out grpc's reconnect backoff (1 s, then 1.6 s...):
#: a channel whose first connect was refused would otherwise see a server that came
#: up meanwhile only a second later, quantising both tools' times to the backoff.
_POLL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 20),
]


def _answering(ports: list[int], deadline: float) -> bool:
    """Poll SayHello on every port until all answer (the anchor's readiness)."""
    pending = set(ports)
    channels = {p: grpc.insecure_channel(f"127.0.0.1:{p}", options=_POLL_OPTIONS) for p in ports}
    try:
        while pending and time.monotonic() < deadline:
            for p in list(pending):
                stub = helloworld_pb2_grpc.GreeterStub(channels[p])
                try:
                    stub.SayHello(helloworld_pb2.HelloRequest(name="bench"), timeout=0.2,
                                  wait_for_ready=False)
                    pending.discard(p)
                except grpc.RpcError:
                    pass
            if pending:
                time.sleep(0.005)
        return not pending
    finally:
        for c in channels.values():
            c.close()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _gone(procs: list[psutil.Process], timeout: float) -> float:
    """Seconds until every one of ``procs`` has exited.

    A zombie counts as gone: it has exited, and only waits to be reaped. Orphans
    (honcho's greeters once their ``sh`` died) are reaped by init, which can take a
    second on some machines; psutil.wait_procs would count that time as theirs.
    Polled cheaply: only the first process still alive is looked at each time.
    """
    began = time.monotonic()
    pending = list(procs)
    while pending and time.monotonic() - began < timeout:
        while pending and _dead(pending[0]):
            pending.pop(0)
        if pending:
            time.sleep(0.005)
    return time.monotonic() - began


#: The opt-in preloading row (issue 21, "under the floor"): the same greeters, forked
#: from a fork server that imported grpc and the greeter once.
PRELOAD_TOML = '[process.greeter]\npreload = ["grpc", "grpc.aio", "devcluster.greeter.server"]\n'


@contextmanager
def _workdir(n: int, preload: bool = False) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        d = Path(tmp)
        (d / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
        if preload:
            (d / "devcluster.toml").write_text(PRELOAD_TOML)
        yield d


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    return env


def run_one(tool: str, n: int, idle: float = 0.0) -> dict[str, float]:
    """Start ``n`` greeters with ``tool``; time ready and shutdown; optionally idle stats."""
    with _workdir(n) as d:
        base = _free_base(n)
        ports = list(range(base, base + n))
        if tool == "devcluster":
            argv = [PY, "-m", "devcluster", "up", "-p", str(base), "-c", f"greeter={n}",
                    "--state-dir", str(d / "state")]
        else:
            argv = [str(BIN / "honcho"), "start", "-p", str(base), "-c", f"greeter={n}"]
        began = time.monotonic()
        proc = subprocess.Popen(argv, cwd=d, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        procs: list[psutil.Process] = []
        try:
            ok = _answering(ports, began + 60)
            ready = time.monotonic() - began
            out: dict[str, float] = {"ready_s": ready if ok else float("nan")}
            if idle:
                out.update(_idle_stats(proc.pid, idle))
                if tool == "devcluster":
                    out.update(_control_latency(d / "state"))
            procs = _tree(proc.pid)
            proc.send_signal(signal.SIGINT)
            out["shutdown_s"] = _gone(procs, 30)
            return out
        finally:
            # Whatever outlived the run (also children orphaned by a dead parent) goes.
            for p in {*procs, *_tree(proc.pid)}:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()


def _idle_stats(pid: int, seconds: float) -> dict[str, float]:
    time.sleep(1.0)  # let start-up work (health probes, log lines) finish
    sup = psutil.Process(pid)
    # The tool's own processes: everything in the tree but the greeters themselves
    # (honcho's per-line helper and ``sh -c`` count as honcho's; devcluster's watchdog
    # as devcluster's). Matching "greeter" anywhere would drop honcho's helpers, whose
    # command line holds ``-c greeter=N``.
    helpers = [p for p in sup.children(recursive=True) if not _is_instance(p)]
    procs = [sup, *helpers]
    before = sum(sum(p.cpu_times()[:2]) for p in procs)
    time.sleep(seconds)
    after = sum(sum(p.cpu_times()[:2]) for p in procs)
    mem = [p.memory_full_info() for p in procs]
    return {"idle_cpu_pct": 100 * (after - before) / seconds,
            "rss_mib": sum(m.rss for m in mem) / 2**20, "uss_mib": sum(m.uss for m in mem) / 2**20,
            "processes": float(len(procs))}


def _is_instance(proc: psutil.Process) -> bool:
    """A greeter process itself (not a shell or helper that started it)."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return bool(cmd) and Path(cmd[0]).name not in ("sh", "bash") and "devcluster.greeter" in cmd


def _control_latency(state_dir: Path) -> dict[str, float]:
    from devcluster.control.plane import ControlClient
    from devcluster.registry import FileRegistry

    with ControlClient(state_dir) as control:
        control.ps()
        ps = []
        for _ in range(30):
            t = time.perf_counter()
            control.ps()
            ps.append(time.perf_counter() - t)
    reg = FileRegistry(state_dir)
    w = []
    for i in range(30):
        t = time.perf_counter()
        reg.update("greeter.1", weight=1 + i % 5)
        w.append(time.perf_counter() - t)
    cli = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([PY, "-m", "devcluster", "ps", "--state-dir", str(state_dir)],
                       stdout=subprocess.DEVNULL, env=_env(), check=True)
        cli.append(time.perf_counter() - t)
    return {"ps_rpc_ms": 1000 * statistics.median(ps), "weight_write_ms": 1000 * statistics.median(w),
            "ps_cli_ms": 1000 * statistics.median(cli)}


def up_detached(n: int, preload: bool = False) -> float:
    """``devcluster up -d`` wall time (returns when every instance is health-checked);
    ``preload``: the greeters forked from a fork server (:data:`PRELOAD_TOML`)."""
    with _workdir(n, preload) as d:
        base = _free_base(n)
        state = d / "state"
        began = time.monotonic()
        subprocess.run([PY, "-m", "devcluster", "up", "-d", "-p", str(base), "-c",
                        f"greeter={n}", "--state-dir", str(state)], cwd=d, env=_env(),
                       stdout=subprocess.DEVNULL, check=True)
        took = time.monotonic() - began
        subprocess.run([PY, "-m", "devcluster", "down", "--state-dir", str(state)], cwd=d,
                       env=_env(), stdout=subprocess.DEVNULL, check=True)
        return took


def bare_spawn(n: int) -> float:
    """The floor: the same greeters started by a plain loop of Popen (no supervisor, no
    shell, no health check), polled until every one answers a SayHello, as honcho is."""
    base = _free_base(n)
    ports = list(range(base, base + n))
    env = _env()
    procs: list[subprocess.Popen[bytes]] = []
    began = time.monotonic()
    try:
        for port in ports:
            procs.append(subprocess.Popen([PY, "-m", "devcluster.greeter", "--port", str(port)],
                                          env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        ok = _answering(ports, began + 60)
        return time.monotonic() - began if ok else float("nan")
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def demo_procfile(tool: str) -> float:
    """The repository's own Procfile (three preloaded greeters, its devcluster.toml), in
    the foreground as `devcluster up` (or `honcho start`) runs it, its fixed ports moved
    to a free base: seconds until every greeter answers a SayHello."""
    root = Path(__file__).resolve().parents[1]
    base = _free_base(3)
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-demo-") as tmp:
        d = Path(tmp)
        text = (root / "Procfile").read_text()
        for i in range(3):
            text = text.replace(f"--port {50051 + i}", f"--port {base + i}")
        (d / "Procfile").write_text(text.replace("services.greeter", "devcluster.greeter"))
        (d / "devcluster.toml").write_text((root / "devcluster.toml").read_text())
        argv = ([PY, "-m", "devcluster", "up", "--state-dir", str(d / "state")]
                if tool == "devcluster" else [str(BIN / "honcho"), "start"])
        began = time.monotonic()
        proc = subprocess.Popen(argv, cwd=d, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ok = _answering([base, base + 1, base + 2], began + 60)
            return time.monotonic() - began if ok else float("nan")
        finally:
            procs = _tree(proc.pid)
            proc.send_signal(signal.SIGINT)
            _gone(procs, 15)
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()


#: Sizes that also get the idle window (idle CPU, memory, `ps` and `weight` timings).
IDLE_SIZES = (3, 30, 100)


def measure(sizes: list[int], runs: int, idle: float,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Rows of figures per tool and size; each row is also given to ``log`` as JSON."""
    rows = []
    for n in sizes:
        for tool in ("devcluster", "honcho"):
            results = [run_one(tool, n) for _ in range(runs)]
            results.append(run_one(tool, n, idle=idle if n in IDLE_SIZES else 0.0))
            row: dict[str, Any] = {"tool": tool, "n": n}
            for key in ("ready_s", "shutdown_s"):
                row[key] = statistics.median(r[key] for r in results)
            for key in ("idle_cpu_pct", "rss_mib", "uss_mib", "processes", "ps_rpc_ms",
                        "weight_write_ms", "ps_cli_ms"):
                if key in results[-1]:
                    row[key] = results[-1][key]
            if tool == "devcluster":
                row["up_detached_s"] = statistics.median(up_detached(n) for _ in range(runs))
                if n >= 10:  # the goal is at N=30; at N=3 the fixed costs are all there is
                    row["up_detached_preload_s"] = statistics.median(
                        up_detached(n, preload=True) for _ in range(runs))
            rows.append(row)
            log(json.dumps(row))
        floor = {"tool": "floor", "n": n,
                 "ready_s": statistics.median(bare_spawn(n) for _ in range(runs))}
        rows.append(floor)
        log(json.dumps(floor))
    demo: dict[str, Any] = {"tool": "demo", "n": 3}
    for tool in ("devcluster", "honcho"):
        demo[f"{tool}_s"] = statistics.median(demo_procfile(tool) for _ in range(runs + 1))
    rows.append(demo)
    log(json.dumps(demo))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,10,30")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args(argv)
    return measure([int(s) for s in args.sizes.split(",")], args.runs, args.idle,
                   log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
