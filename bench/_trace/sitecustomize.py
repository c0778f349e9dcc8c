"""Timestamps for ``python -m bench.waterfall``: loaded by every Python process of a run.

``bench.waterfall`` puts this directory first on ``PYTHONPATH`` and names a file in
``DEVCLUSTER_BENCH_TRACE``; then the CLI, the daemon, the watchdog and every greeter
append JSON lines ``{"pid", "t", "what", ...}`` to it (``O_APPEND`` writes of one line
each: atomic between processes). Nothing of devcluster's is changed to be traced: the
marks come from wrapping functions as their modules are imported (a target that no
longer exists is skipped), and from timing the imports of the heavy packages.
Without ``DEVCLUSTER_BENCH_TRACE`` this module does nothing.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import time
from typing import Any

_PATH = os.environ.get("DEVCLUSTER_BENCH_TRACE")

#: Packages whose first import is timed (start and end) in every process.
HEAVY = ("asyncio", "grpc", "grpc.aio", "psutil", "typer", "rich", "devcluster.cli",
         "devcluster.api", "devcluster.control.plane", "devcluster.supervisor.runtime",
         "devcluster.supervisor.probes",
         "devcluster.supervisor.health", "grpc_health.v1.health", "devcluster.greeter.server",
         "devcluster.registry", "watchfiles", "devcluster.daemon", "devcluster.launch")

#: (module, attribute path, label, mode): wrapped once the module is imported.
#: mode: "call" marks begin and end; "first" marks only the first end; "each" marks
#: every end (with a running count).
TARGETS: list[tuple[str, str, str, str]] = [
    ("devcluster.api", "Cluster.up", "cli.up", "call"),
    ("devcluster.launch", "Launcher.start", "cli.start_daemon", "call"),
    ("devcluster.launch", "Launcher._read_ready", "cli.read_ready", "call"),
    # Instances started between the daemon's fork and exec (the daemon's pid by then).
    ("devcluster.supervisor.early", "_spawn", "daemon.spawn", "call"),
    ("devcluster.config.procfile", "load", "daemon.procfile_load", "each"),
    ("devcluster.supervisor.process", "port_owner", "daemon.check_ports", "call"),
    ("devcluster.supervisor.process", "ports_taken", "daemon.check_ports", "call"),
    ("devcluster.supervisor.process", "become_subreaper", "daemon.subreaper", "each"),
    ("devcluster.statedir", "hold_lock", "daemon.hold_lock", "each"),
    ("devcluster.supervisor.runtime", "Supervisor._report_ready", "daemon.ready", "each"),
    ("devcluster.supervisor.watchdog", "Watchdog.__init__", "daemon.watchdog", "call"),
    ("devcluster.supervisor.runtime", "Supervisor.__init__", "daemon.supervisor_init", "call"),
    ("devcluster.supervisor.runtime", "Supervisor.start_all", "daemon.start_all", "call"),
    ("devcluster.supervisor.runtime", "Supervisor._written", "daemon.written", "call"),
    ("devcluster.control.server", "ControlServer.start", "daemon.control_start", "call"),
    ("devcluster.supervisor.process", "spawn", "daemon.spawn", "call"),
    ("devcluster.supervisor.recorder", "Recorder._write", "daemon.registry_write", "each"),
    ("devcluster.supervisor.health", "find_port", "daemon.port_found", "each"),
    ("devcluster.supervisor.health", "check", "daemon.health_check", "each"),
    ("devcluster.supervisor.health", "wait_ready", "daemon.health_ok", "each"),
    ("devcluster.supervisor.instance", "Instance._set", "daemon.state", "each"),
    ("grpc.aio._server", "Server.start", "greeter.listening", "first"),
    ("grpc_health.v1.health", "aio.HealthServicer.Check", "greeter.health_answer", "first"),
]


def _emit(what: str, **extra: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "t": time.time(), "what": what, **extra}) + "\n"
    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # type: ignore[arg-type]
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _started_at() -> float:
    """When this process was forked (the kernel's start time, in 10 ms ticks)."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return time.time() - up + ticks / os.sysconf("SC_CLK_TCK")


def _wrap(obj: Any, label: str, mode: str) -> Any:
    count = [0]

    def end(**extra: Any) -> None:
        count[0] += 1
        if mode == "first" and count[0] > 1:
            return
        _emit(label + (".end" if mode == "call" else ""), n=count[0], **extra)

    if inspect.iscoroutinefunction(obj):
        @functools.wraps(obj)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            if mode == "call":
                _emit(label + ".begin")
            try:
                return await obj(*args, **kwargs)
            finally:
                end()
        return awrapper

    @functools.wraps(obj)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if mode == "call":
            _emit(label + ".begin")
        extra = {}
        if label == "daemon.state" and len(args) > 1:
            extra = {"state": getattr(args[1], "value", str(args[1])),
                     "name": getattr(args[0], "name", "?")}
        try:
            return obj(*args, **kwargs)
        finally:
            end(**extra)
    return wrapper


def _patch(module: Any) -> None:
    for modname, path, label, mode in TARGETS:
        if modname != module.__name__:
            continue
        *owners, attr = path.split(".")
        holder = module
        try:
            for part in owners:
                holder = getattr(holder, part)
            original = getattr(holder, attr)
        except (AttributeError, KeyError):
            continue
        setattr(holder, attr, _wrap(original, label, mode))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, timed: bool) -> None:
        self.inner = inner
        self.timed = timed

    def __getattr__(self, name: str) -> Any:  # get_code, is_package... (runpy's -m)
        return getattr(self.inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        if self.timed:
            _emit("import.begin", module=module.__name__)
        try:
            self.inner.exec_module(module)
        finally:
            if self.timed:
                _emit("import.end", module=module.__name__)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    watched = set(HEAVY) | {t[0] for t in TARGETS}

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.watched:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, name in HEAVY)
        return spec


if _PATH:
    import importlib.util

    _emit("process.interpreter", forked=_started_at(), argv=sys.orig_argv[1:8])
    sys.meta_path.insert(0, _Finder())

    @atexit.register
    def _bye() -> None:
        t = os.times()
        _emit("process.exit", cpu_s=t.user + t.system)
