"""``up`` and ``down``: a cluster's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from devcluster import defaults
from devcluster.api import (
    Cluster,
    NotReadyError,
    control_client,
    default_state_dir,
    instance_dict,
)
from devcluster.cli.app import (
    DEFAULT_PROCFILE,
    JsonOpt,
    ProcfileOpt,
    RegistryOpt,
    StateDirOpt,
    _state_dir,
    app,
    err,
    fail,
    out,
)
from devcluster.cli.render import _print_instances
from devcluster.config import procfile as procfile_mod
from devcluster.config.policy import Policy
from devcluster.errors import UsageError


def _policies(items: list[str]) -> dict[str, Policy]:
    out_: dict[str, Policy] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out_[name] = Policy(value)
        except ValueError:
            raise UsageError(f"bad --restart {item!r}; expected TYPE=POLICY with POLICY one of "
                             f"{', '.join(p.value for p in Policy)}") from None
        if not sep or not name:
            raise UsageError(f"bad --restart {item!r}; expected TYPE=POLICY, e.g. web=always")
    return out_


@app.command()
def up(
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    env: Annotated[list[Path], typer.Option("--env", "-e", metavar="FILE",
                                            help="Extra env file (repeatable).")]
    = [],  # noqa: B006 - typer reads the default, never mutates it
    scale: Annotated[list[str], typer.Option("--scale", "-c", metavar="TYPE=N",
                                             help="TYPE=N (repeatable).")]
    = [],  # noqa: B006
    port: Annotated[int | None, typer.Option(
        "--port", "-p", metavar="PORT", show_default=False,
        help=f"Base port ($PORT of the first instance); 0 lets servers pick. Default: "
             f"[cluster] port of devcluster.toml, else {defaults.BASE_PORT}.")] = None,
    grace: Annotated[float | None, typer.Option(
        metavar="SECONDS", show_default=False,
        help=f"Seconds instances get to stop on SIGINT. Default: the file's grace, "
             f"else {defaults.GRACE:g}.")] = None,
    restart: Annotated[list[str], typer.Option(
        "--restart", metavar="TYPE=POLICY",
        help="TYPE=POLICY: no, on-failure (default), always.")] = [],  # noqa: B006
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background; "
                                         "return once every instance serves.")] = False,
    ready_timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", show_default=False,
        help=f"Seconds an instance gets to serve. Default: the file's ready_timeout, "
             f"else {defaults.READY_TIMEOUT:g}.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="With -d: the instances as JSON, "
                                                        "as `ps --json`.")] = False,
    registry: RegistryOpt = None,
    console: Annotated[bool, typer.Option(
        "--console", help="Also serve the web console (see `devcluster console`) while the "
                          "cluster runs; its URL is printed first (with -d: when up returns, "
                          "and kept in the state dir's console.url).")] = False,
    console_port: Annotated[int, typer.Option(
        metavar="PORT", help="Port of --console on 127.0.0.1 (default: a free one).")] = 0,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Rolling reload when files change (default: the Procfile's "
                        "directory; or the PATHs); see `devcluster reload`.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", show_default=False,
        help="Project file (default: devcluster.toml beside the Procfile, if there is "
             "one). Flags override it.")] = None,
    watch_paths: Annotated[list[Path] | None, typer.Argument(
        metavar="[PATH]...", help="With --watch: what to watch.", show_default=False)] = None,
) -> None:
    """Start every instance of the Procfile and supervise them (Ctrl-C stops them all).

    Settings per process type (scale, restart, readiness probe, depends_on, env,
    metadata...) come from devcluster.toml beside the Procfile when there is one.

    Example: devcluster up -d -c greeter=3 -p 0   (or: devcluster up --watch src)"""
    if json_ and not detach:
        raise UsageError("--json needs -d: in the foreground, up prints the instances' logs, "
                         "not a result (use `devcluster up -d --json`)")
    watched = _watched(watch, watch_paths or [])
    scale_counts = procfile_mod.parse_scale(scale)
    policies = _policies(restart)
    directory = _state_dir(procfile, state_dir)
    if (grace is not None and grace < 0) or (ready_timeout is not None and ready_timeout <= 0):
        raise UsageError("--grace must be >= 0 and --ready-timeout > 0")
    if console and not 0 <= console_port <= 65535:
        raise UsageError(f"--console-port must be 0..65535, got {console_port}")
    if detach:
        cluster = Cluster(procfile, scale=scale_counts, state_dir=directory, port=port,
                          grace=grace, env_files=env, restart=policies,
                          ready_timeout=ready_timeout, attach=False, registry=registry,
                          watch=watched, console=console, console_port=console_port,
                          config=config)
        began = time.monotonic()
        try:
            states = cluster.up()
        except NotReadyError as e:
            for note in cluster.notes:
                err.print(f"devcluster: {note}", markup=False)
            _print_instances(list(e.states.values()), json_)
            fail(f"{e}; the cluster keeps running: fix it, then `devcluster start NAME`")
        for note in cluster.notes:
            err.print(f"devcluster: {note}", markup=False)
        _print_instances(list(states.values()), json_)
        if not json_:
            where = "" if directory == default_state_dir(procfile) else f" --state-dir {directory}"
            out.print(f"ready in {time.monotonic() - began:.2f} s; stop with "
                      f"`devcluster down{where}`")
        return
    from devcluster.config.plan import plan
    from devcluster.config.project import Flags
    from devcluster.daemon import serve
    from devcluster.supervisor.runtime import Settings

    r = plan(procfile, Flags(port=port, grace=grace, ready_timeout=ready_timeout,
                             registry=registry, scale=scale_counts, restart=policies), config)
    settings = Settings(procfile=procfile.absolute(), state_dir=directory, env_files=tuple(env),
                        scale=dict(r.scale), base_port=r.port, grace=r.grace,
                        ready_timeout=r.ready_timeout, restart=dict(r.restart),
                        registry=r.registry, config=config.absolute() if config else None,
                        types=r.types, waves=r.waves, watch=watched)
    with _console(console, directory, settings.registry, console_port):
        code = asyncio.run(serve(settings, sys.stdout))
    raise typer.Exit(code)


def _watched(watch: bool, paths: list[Path]) -> tuple[Path, ...] | None:
    """What ``--watch`` watches (empty: the Procfile's directory), None without it."""
    if paths and not watch:
        raise UsageError(f"unexpected argument {str(paths[0])!r}; paths are for --watch: "
                         "`devcluster up --watch PATH...`")
    for path in paths:
        if not path.exists():
            raise UsageError(f"--watch {path}: no such file or directory; check the path")
    return tuple(p.absolute() for p in paths) if watch else None


@contextlib.contextmanager
def _console(wanted: bool, directory: Path, registry: str | None, port: int) -> Iterator[None]:
    """The web console beside a foreground cluster, for as long as it runs."""
    if not wanted:
        yield
        return
    from devcluster.console import Console

    server = Console(directory, registry, port=port)
    out.print(f"console: {server.start()}", markup=False)
    try:
        yield
    finally:
        server.stop()


@app.command()
def down(
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    grace: Annotated[float | None, typer.Option(metavar="SECONDS",
                                                help="Seconds instances get to stop.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Stop the running cluster gracefully; returns when every process is gone.

    Example: devcluster down --grace 2"""
    directory = _state_dir(procfile, state_dir)
    from devcluster.statedir import running_pid

    pid = running_pid(directory)
    with control_client(directory) as control:
        reply = control.down(grace)
    if pid and pid > 0:
        _wait_gone(pid, 30)
    if json_:
        _print_instances([instance_dict(i) for i in reply.instances], True)
        return
    out.print(f"stopped {len(reply.instances)} instances")


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


