"""``up`` and ``down``: a cluster's life cycle.

``up`` reads its flags once into :class:`UpFlags`; the foreground and ``-d`` differ only
in where the supervisor runs: in this process (:func:`_foreground`, through
:func:`devcluster.daemon.serve` with the settings of :func:`settings_for`, the one place
the CLI builds them) or in the background (:func:`_detached`, through
:class:`devcluster.api.Cluster`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devcluster.cli import views
from devcluster.cli.interrupt import stop_on_signals
from devcluster.cli.place import Place
from devcluster.errors import UsageError

if TYPE_CHECKING:
    from devcluster.config.policy import Policy
    from devcluster.supervisor.request import UpRequest


@dataclass(frozen=True)
class UpFlags:
    """``up``'s flags, parsed and checked: what both ways of running a cluster need."""

    at: Place
    scale: dict[str, int]
    restart: dict[str, Policy]
    env: tuple[Path, ...]
    port: int | None
    grace: float | None
    ready_timeout: float | None
    config: Path | None
    watch: tuple[Path, ...] | None
    console: bool
    console_port: int


def _policies(items: Sequence[str]) -> dict[str, Policy]:
    from devcluster.config.policy import Policy

    out: dict[str, Policy] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = Policy(value)
        except ValueError:
            raise UsageError(f"bad --restart {item!r}; expected TYPE=POLICY with POLICY one of "
                             f"{', '.join(p.value for p in Policy)}") from None
        if not sep or not name:
            raise UsageError(f"bad --restart {item!r}; expected TYPE=POLICY, e.g. web=always")
    return out


def _watched(watch: bool, paths: Sequence[str]) -> tuple[Path, ...] | None:
    """What ``--watch`` watches (empty: the Procfile's directory), None without it."""
    if paths and not watch:
        raise UsageError(f"unexpected argument {paths[0]!r}; paths are for --watch: "
                         "`devcluster up --watch PATH...`")
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"--watch {path}: no such file or directory; check the path")
    return tuple(Path(p).absolute() for p in paths) if watch else None


def up(at: Place, env: list[str], scale: list[str], port: int | None, grace: float | None,
       restart: list[str], detach: bool, ready_timeout: float | None, as_json: bool,
       console: bool, console_port: int, watch: bool, config: str | None,
       watch_paths: list[str]) -> int:
    """Start the cluster: ``-d`` in the background, else here until Ctrl-C or SIGTERM."""
    if as_json and not detach:
        raise UsageError("--json needs -d: in the foreground, up prints the instances' logs, "
                         "not a result (use `devcluster up -d --json`)")
    from devcluster.config.procfile import parse_scale

    watched = _watched(watch, watch_paths)
    flags = UpFlags(at=at, scale=parse_scale(scale), restart=_policies(restart),
                    env=tuple(Path(e) for e in env), port=port, grace=grace,
                    ready_timeout=ready_timeout, config=Path(config) if config else None,
                    watch=watched, console=console, console_port=console_port)
    if (grace is not None and grace < 0) or (ready_timeout is not None and ready_timeout <= 0):
        raise UsageError("--grace must be >= 0 and --ready-timeout > 0")
    if console and not 0 <= console_port <= 65535:
        raise UsageError(f"--console-port must be 0..65535, got {console_port}")
    return _detached(flags, as_json) if detach else _foreground(flags)


def settings_for(flags: UpFlags) -> UpRequest:
    """What a foreground ``up`` asks of its supervisor: the same request, built the same
    way, as the background supervisor of ``up -d`` and of the Python API gets."""
    from devcluster import launch

    at = flags.at
    resolved = launch.resolve(at.procfile, flags.config,
                              (flags.port, flags.grace, flags.ready_timeout, at.registry_url),
                              flags.scale, flags.restart)
    ask = launch.Ask(procfile=at.procfile.absolute(), state_dir=at.state_dir, env_files=flags.env,
                     config=flags.config.absolute() if flags.config else None, watch=flags.watch)
    return launch.request(ask, resolved)


def _foreground(flags: UpFlags) -> int:
    """The supervisor in this process, its log on the terminal, until Ctrl-C or SIGTERM
    (the supervisor's own handlers take both while it runs)."""
    settings = _start_early(settings_for(flags))
    import asyncio

    from devcluster.daemon import serve
    from devcluster.exiting import exit_now

    with stop_on_signals(), _console(flags.console, flags.at.state_dir, settings.registry,
                                     flags.console_port):
        code = asyncio.run(serve(settings, sys.stdout))
    exit_now(code)  # everything is stopped and closed: the interpreter's teardown only delays


def _start_early(settings: UpRequest) -> UpRequest:
    """Lock the state dir, then start the instances (and the preloaded types' fork
    servers) before importing the supervisor: they boot while it imports, and it adopts
    them, as the background supervisor of ``up -d`` does. The settings, with the lock."""
    import dataclasses

    from devcluster.statedir import prepare, take_lock
    from devcluster.supervisor import early, preboot
    from devcluster.supervisor.request import boot_view

    prepare(settings.state_dir)
    with take_lock(settings.state_dir) as lock:
        # The supervisor adopts the lock as a daemon adopts an inherited one: a file
        # descriptor of its own (the flock stays with the open file while one is open).
        settings = dataclasses.replace(settings, lock_fd=os.dup(lock.fileno()))
    text = settings.to_json()
    early.start_here(boot_view(text), settings.types, settings.grace)
    preboot.begin([text])
    return settings



def _detached(flags: UpFlags, as_json: bool) -> int:
    """``up -d``: the supervisor in the background; return once every instance settled."""
    from devcluster.api import Cluster, NotReadyError
    from devcluster.statedir import running_pid

    at = flags.at
    cluster = Cluster(at.procfile, scale=flags.scale, state_dir=at.state_dir, port=flags.port,
                      grace=flags.grace, env_files=list(flags.env), restart=flags.restart,
                      ready_timeout=flags.ready_timeout, owned=False, registry=at.registry_url,
                      watch=flags.watch, console=flags.console,
                      console_port=flags.console_port, config=flags.config)
    down = "devcluster down" + ("" if at.is_default_state_dir else f" --state-dir {at.state_dir}")
    from devcluster import daemonfork

    daemonfork.wanted = True  # this process has nothing else to do: it becomes the daemon
    began = time.monotonic()
    try:
        states = cluster.up()
    except NotReadyError as e:
        _notes(cluster.notes)
        views.render(views.instances(list(e.states.values())), as_json)
        sys.stdout.flush()
        views.error_line(f"{e}; the cluster keeps running: fix it, then `devcluster start NAME`")
        return 1
    except KeyboardInterrupt:
        if running_pid(at.state_dir) is not None:  # the supervisor holds its lock
            views.note(f"interrupted; the cluster keeps running in the background: "
                       f"stop it with `{down}`")
        return 130
    _notes(cluster.notes)
    views.render(views.instances(list(states.values())), as_json)
    if not as_json:
        print(f"ready in {time.monotonic() - began:.2f} s; stop with `{down}`")
    from devcluster.exiting import exit_now

    exit_now(0)  # said all; the interpreter's teardown would only make a script wait longer


def _notes(notes: list[str]) -> None:
    for note in notes:
        views.note(note)


@contextlib.contextmanager
def _console(wanted: bool, directory: Path, registry: str | None, port: int) -> Iterator[None]:
    """The web console beside a foreground cluster, for as long as it runs."""
    if not wanted:
        yield
        return
    from devcluster.console import Console

    server = Console(directory, registry, port=port, port_option="--console-port")
    print(f"console: {server.start()}", flush=True)
    try:
        yield
    finally:
        server.stop()


def down(at: Place, grace: float | None, as_json: bool) -> views.Output:
    """Stop the running cluster gracefully; return when the supervisor has exited."""
    from devcluster.control.client import ControlClient, as_dict
    from devcluster.statedir import running_pid

    pid = running_pid(at.state_dir)
    with ControlClient(at.state_dir) as control:
        reply = control.down(grace)
    if pid and pid > 0:
        _wait_gone(pid, 30)
    rows = [as_dict(i) for i in reply.instances]
    return views.Output(rows, f"stopped {len(rows)} instances")


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until the supervisor has exited; an exited one nobody reaped yet counts."""
    import psutil

    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    deadline = time.monotonic() + timeout
    # Polls: a process that is not our child gives no event to wait on.
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.01)
