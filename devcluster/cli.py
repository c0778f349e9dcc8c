"""The ``devcluster`` command. Thin: every command is a call of the Python API or of
the control client; this module only parses, prints, and chooses exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from devcluster import procfile as procfile_mod
from devcluster.api import (
    Cluster,
    NotReadyError,
    control_client,
    default_state_dir,
    instance_dict,
    parse_weight,
)
from devcluster.errors import DevclusterError, NoClusterError, UsageError
from devcluster.policy import Policy
from devcluster.registry import FileRegistry

app = typer.Typer(
    name="devcluster",
    help="A real local gRPC cluster in one command: run a Procfile of servers, then kill, "
         "pause, drain and reweight single instances while a balancing client shows "
         "which instance served each call.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Tables piped to a file or a script must not be cut at 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ProcfileOpt = Annotated[Path, typer.Option("--procfile", "-f", help="Procfile to run.",
                                           show_default=True)]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help="State dir (default: .devcluster beside the Procfile; "
                        "env DEVCLUSTER_HOME).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RegistryOpt = Annotated[str | None, typer.Option(
    "--registry", help="etcd://host:2379[/prefix] to use etcd (env DEVCLUSTER_REGISTRY); "
                       "default: the state dir's registry.json.", show_default=False)]


def _registry(procfile: Path, state_dir: Path | None, registry: str | None) -> Any:
    from devcluster.registry import open_registry, registry_spec

    return open_registry(registry_spec(registry, _state_dir(procfile, state_dir)))


def _is_etcd(registry: str | None) -> bool:
    return (registry or os.environ.get("DEVCLUSTER_REGISTRY") or "").startswith("etcd://")


def _state_dir(procfile: Path, state_dir: Path | None) -> Path:
    return default_state_dir(procfile, state_dir)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]devcluster: error:[/red] {message}", markup=True)
    raise typer.Exit(code)


# -- up / down ---------------------------------------------------------------------------

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
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    env: Annotated[list[Path], typer.Option("--env", "-e", help="Extra env file (repeatable).")]
    = [],  # noqa: B006 - typer reads the default, never mutates it
    scale: Annotated[list[str], typer.Option("--scale", "-c", help="TYPE=N (repeatable).")]
    = [],  # noqa: B006
    port: Annotated[int, typer.Option("--port", "-p", help="Base port ($PORT of the first "
                                                           "instance); 0 lets servers pick.")]
    = procfile_mod.DEFAULT_BASE_PORT,
    grace: Annotated[float, typer.Option(help="Seconds instances get to stop on SIGINT.")] = 5.0,
    restart: Annotated[list[str], typer.Option(
        "--restart", help="TYPE=POLICY: no, on-failure (default), always.")] = [],  # noqa: B006
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background; "
                                         "return once every instance serves.")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds an instance gets to serve.")]
    = 30.0,
    json_: JsonOpt = False,
    registry: RegistryOpt = None,
) -> None:
    """Start every instance of the Procfile and supervise them (Ctrl-C stops them all)."""
    scale_counts = procfile_mod.parse_scale(scale)
    policies = _policies(restart)
    directory = _state_dir(procfile, state_dir)
    if grace < 0 or ready_timeout <= 0:
        raise UsageError("--grace must be >= 0 and --ready-timeout > 0")
    if detach:
        cluster = Cluster(procfile, scale=scale_counts, state_dir=directory, port=port,
                          grace=grace, env_files=env, restart=policies,
                          ready_timeout=ready_timeout, attach=False, registry=registry)
        began = time.monotonic()
        try:
            states = cluster.up()
        except NotReadyError as e:
            for note in cluster.notes:
                err.print(f"devcluster: {note}", markup=False)
            _print_instances(_ready_rows(e.states), json_)
            fail(f"{e}; the cluster keeps running: fix it, then `devcluster start NAME`")
        for note in cluster.notes:
            err.print(f"devcluster: {note}", markup=False)
        _print_instances(_ready_rows(states), json_)
        if not json_:
            where = "" if directory == default_state_dir(procfile) else f" --state-dir {directory}"
            out.print(f"ready in {time.monotonic() - began:.2f} s; stop with "
                      f"`devcluster down{where}`")
        return
    from devcluster.supervisor import Settings, serve

    settings = Settings(procfile=procfile.absolute(), state_dir=directory, env_files=tuple(env),
                        scale=scale_counts, base_port=port, grace=grace,
                        ready_timeout=ready_timeout, restart=policies,
                        registry=registry or os.environ.get("DEVCLUSTER_REGISTRY") or None)
    code = asyncio.run(serve(settings, sys.stdout))
    raise typer.Exit(code)


def _ready_rows(states: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``ps``-shaped rows from the supervisor's ready report (no control call needed)."""
    now = time.time()
    return [{"name": name, "service": s.get("service"), "state": s["state"], "pid": s.get("pid"),
             "address": s.get("address") or None, "weight": 1, "enabled": True,
             "restarts": s.get("restarts", 0), "last_exit": s.get("last_exit") or None,
             "uptime_s": round(now - s["started_at"], 3) if s.get("started_at") else 0.0,
             "cpu_percent": 0.0, "rss_bytes": 0} for name, s in states.items()]


@app.command()
def down(
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    grace: Annotated[float | None, typer.Option(help="Seconds instances get to stop.")] = None,
) -> None:
    """Stop the running cluster gracefully; returns when every process is gone."""
    directory = _state_dir(procfile, state_dir)
    from devcluster.statedir import running_pid

    pid = running_pid(directory)
    with control_client(directory) as control:
        reply = control.down(grace)
    if pid and pid > 0:
        _wait_gone(pid, 30)
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


# -- looking -------------------------------------------------------------------------------

def _uptime(seconds: float) -> str:
    if not seconds:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n else "-"


_STATE_STYLE = {"serving": "green", "starting": "yellow", "draining": "yellow",
                "paused": "magenta", "backoff": "yellow", "failed": "red", "killed": "red",
                "exited": "red", "stopped": "dim"}


def _print_instances(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("NAME", "STATE", "PID", "ADDRESS", "WEIGHT", "UPTIME", "RESTARTS", "CPU%", "RSS"):
        table.add_column(col, justify="right" if col in {"PID", "WEIGHT", "RESTARTS", "CPU%",
                                                          "RSS"} else "left")
    for r in rows:
        style = _STATE_STYLE.get(r["state"], "")
        state = r["state"] + ("" if r["enabled"] else " (disabled)")
        if r.get("last_exit") and r["state"] in {"exited", "failed", "killed", "backoff"}:
            state += f" ({r['last_exit']})"
        table.add_row(r["name"], f"[{style}]{state}[/{style}]" if style else state,
                      str(r["pid"] or "-"), r["address"] or "-", str(r["weight"]),
                      _uptime(r["uptime_s"]), str(r["restarts"]), f"{r['cpu_percent']:.1f}",
                      _mib(r["rss_bytes"]))
    out.print(table)


@app.command()
def ps(procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
       json_: JsonOpt = False, registry: RegistryOpt = None) -> None:
    """List instances: state, pid, address, weight, uptime, restarts, CPU, memory.

    With an etcd registry: every instance of every supervisor registered there."""
    if _is_etcd(registry):
        snap = _registry(procfile, state_dir, registry).snapshot()
        now = time.time()
        rows = [{**r.to_dict(), "uptime_s": round(now - r.started_at, 3)
                 if r.started_at and r.state.running else 0.0, "cpu_percent": 0.0,
                 "rss_bytes": 0, "last_exit": None} for r in snap.records.values()]
    else:
        with control_client(_state_dir(procfile, state_dir)) as control:
            rows = [instance_dict(i) for i in control.ps().instances]
    _print_instances(rows, json_)


@app.command()
def logs(
    name: Annotated[str | None, typer.Argument(help="Instance (default: the merged log).")]
    = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")]
    = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show.")] = 50,
    procfile: Annotated[Path, typer.Option("--procfile", help="Procfile.")] = Path("Procfile"),
    state_dir: StateDirOpt = None,
) -> None:
    """Show (and with -f follow) the log of one instance or of the whole cluster."""
    if lines < 0:
        raise UsageError(f"--lines must be 0 or more, got {lines}")
    from devcluster.logview import show_logs

    show_logs(_state_dir(procfile, state_dir), name, follow, lines)


@app.command()
def registry(procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
             json_: JsonOpt = False, registry_url: RegistryOpt = None) -> None:
    """Print the registry: every record with weight, enabled and state."""
    reg = _registry(procfile, state_dir, registry_url)
    snap = reg.snapshot()
    if json_:
        print(json.dumps({"revision": snap.revision,
                          "instances": {n: r.to_dict() for n, r in snap.records.items()}},
                         indent=2))
        return
    table = Table(box=None, header_style="bold", pad_edge=False,
                  title=f"{getattr(reg, 'path', None) or registry_url} "
                        f"(revision {snap.revision})", title_justify="left")
    for col in ("NAME", "SERVICE", "ADDRESS", "WEIGHT", "ENABLED", "STATE", "PID"):
        table.add_column(col)
    for r in snap.records.values():
        table.add_row(r.name, r.service, r.address or "-", str(r.weight),
                      "yes" if r.enabled else "no", r.state.value, str(r.pid or "-"))
    out.print(table)


# -- acting --------------------------------------------------------------------------------

NamesArg = Annotated[list[str] | None, typer.Argument(
    help="Instances (server1, greeter.2) or process types (greeter).", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every instance.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Return without waiting for the "
                                                            "change to happen.")]


def _act(verb: str, names: list[str] | None, all_: bool, procfile: Path, state_dir: Path | None,
         as_json: bool, **kw: Any) -> None:
    if not names and not all_:
        raise UsageError(f"name an instance or process type to {verb}, or pass --all")
    with control_client(_state_dir(procfile, state_dir)) as control:
        reply = control.act(verb, names or [], all_=all_, **kw)
    rows = [instance_dict(i) for i in reply.instances]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        extra = f" ({r['last_exit']})" if r.get("last_exit") and r["state"] in {
            "exited", "failed", "killed", "backoff", "stopped"} else ""
        where = f" on {r['address']}" if r["state"] == "serving" and r["address"] else ""
        if r["name"] in reply.unchanged:
            out.print(f"{r['name']} is already {r['state']}{where}; nothing to do")
        else:
            out.print(f"{r['name']}: {r['state']}{where}{extra}")


def _verb(verb: str, doc: str, waits: bool) -> None:
    def command(
        names: NamesArg = None,
        all_: AllOpt = False,
        no_wait: NoWaitOpt = False,
        procfile: ProcfileOpt = Path("Procfile"),
        state_dir: StateDirOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        _act(verb, names, all_, procfile, state_dir, json_, wait=waits and not no_wait)

    command.__doc__ = doc
    app.command(verb)(command)


@app.command()
def kill(
    names: NamesArg = None,
    signal: Annotated[str, typer.Option("--signal", "-s", help="Signal to send.")] = "SIGKILL",
    all_: AllOpt = False,
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Simulate a crash: SIGKILL (or --signal) to the instance's process group."""
    from devcluster.process import parse_signal

    parse_signal(signal)
    _act("kill", names, all_, procfile, state_dir, json_, signal=signal)


_verb("stop", "Stop gracefully: draining, SIGINT, SIGKILL after the grace period.", False)
_verb("start", "Start a stopped/killed/exited/failed instance (same name, port, env).", True)
_verb("restart", "Graceful stop, then start again.", True)
_verb("pause", "Freeze with SIGSTOP: a hung server that stays registered.", False)
_verb("resume", "Thaw a paused instance with SIGCONT.", False)


@app.command()
def scale(
    counts: Annotated[list[str], typer.Argument(help="TYPE=N, e.g. greeter=5.")],
    no_wait: NoWaitOpt = False,
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Grow or shrink a process type while the cluster runs."""
    wanted = procfile_mod.parse_scale(counts)
    with control_client(_state_dir(procfile, state_dir)) as control:
        reply = control.scale(wanted, wait=not no_wait)
    _print_instances([instance_dict(i) for i in reply.instances], json_)


def _registry_names(reg: FileRegistry, name: str) -> list[str]:
    snap = reg.snapshot()
    if name in snap.records:
        return [name]
    of_type = [r.name for r in snap.records.values()
               if r.name.split(".")[0] == name]
    if of_type:
        return of_type
    from devcluster.errors import UnknownInstanceError

    raise UnknownInstanceError(name, list(snap.records))


@app.command()
def weight(
    name: Annotated[str, typer.Argument(help="Instance or process type.")],
    value: Annotated[str, typer.Argument(metavar="WEIGHT", help="Integer 0..1000; 0 drains.")],
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Set the weight of an instance in the registry (works without a supervisor)."""
    w = parse_weight(value)
    reg = _registry(procfile, state_dir, registry)
    names = _registry_names(reg, name)
    reg.update_many({n: {"weight": w} for n in names})
    for n in names:
        out.print(f"{n}: weight {w}")


def _enable(name: str, procfile: Path, state_dir: Path | None, enabled: bool,
            registry: str | None = None) -> None:
    reg = _registry(procfile, state_dir, registry)
    names = _registry_names(reg, name)
    reg.update_many({n: {"enabled": enabled} for n in names})
    for n in names:
        out.print(f"{n}: {'enabled' if enabled else 'disabled'}")


@app.command()
def enable(name: Annotated[str, typer.Argument(help="Instance or process type.")],
            procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
            registry: RegistryOpt = None) -> None:
    """Let an instance receive calls again."""
    _enable(name, procfile, state_dir, True, registry)


@app.command()
def disable(name: Annotated[str, typer.Argument(help="Instance or process type.")],
            procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
            registry: RegistryOpt = None) -> None:
    """Take an instance out of rotation (it keeps running)."""
    _enable(name, procfile, state_dir, False, registry)


@app.command()
def client(
    service: Annotated[str | None, typer.Option(help="Service to call (default: every "
                                                     "serving instance).")] = None,
    name: Annotated[str, typer.Option(help="Name to greet; calls send NAME-SEQ.")] = "world",
    count: Annotated[int | None, typer.Option("--count", "-n", help="Calls to make "
                                              "(default: until Ctrl-C).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between calls.")] = 0.5,
    concurrency: Annotated[int, typer.Option("--concurrency", "-C",
                                             help="Calls in flight.")] = 1,
    timeout: Annotated[float, typer.Option(help="Deadline of each call, seconds.")] = 2.0,
    policy: Annotated[str | None, typer.Option(
        help="weighted (default), round_robin or pick_first; with a grpc --target, grpc's "
             "own pick_first (default) or round_robin.", show_default=False)] = None,
    target: Annotated[str | None, typer.Option(
        help="Call these servers instead of the registry: static:///H:P,H:P,... (a fixed "
             "list, devcluster's balancer, no cluster needed), or a grpc target "
             "(ipv4:H:P,H:P / dns:///H:P / H:P) resolved and balanced by grpc itself.",
        show_default=False)] = None,
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per call, then a "
                                                        "summary object.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Call SayHello in a loop through the balancing client; print who served each call."""
    from devcluster.client.runner import ClientOptions, run_client
    from devcluster.client.targets import parse_target, resolve_policy

    # A bad target or policy is a usage error before anything starts.
    parsed = parse_target(target) if target is not None else None
    resolve_policy(parsed, policy)
    if (count is not None and count < 0) or interval < 0 or timeout <= 0 or concurrency < 1:
        raise UsageError("--count and --interval must be >= 0, --timeout > 0, "
                         "--concurrency >= 1")
    directory = None
    if parsed is not None:
        if service is not None or state_dir is not None:
            raise UsageError("--service and --state-dir pick instances from a registry; "
                             "--target names the servers itself: pass one or the other")
        if parsed.comma_list:
            err.print(f"devcluster: note: grpc reads {target!r} as one host name and cannot "
                      f"resolve it; a list needs static:///{target} (devcluster's balancer) "
                      f"or ipv4:{target} (grpc's)", markup=False)
    elif _is_etcd(registry):
        directory = _state_dir(procfile, state_dir)
        shared = _registry(procfile, state_dir, registry)
    else:
        directory = _state_dir(procfile, state_dir)
        if not (directory / "registry.json").exists():
            raise NoClusterError(f"no registry in {directory}; start a cluster with "
                                 "`devcluster up` (or pass --state-dir, or --target)")
    opts = ClientOptions(service=service, name=name, count=count, interval=interval,
                         concurrency=concurrency, timeout=timeout, json=json_, policy=policy,
                         state_dir=directory, target=target,
                         registry=shared if _is_etcd(registry) and parsed is None else None)
    summary = run_client(opts, out)
    if count is not None and summary.failures:
        raise typer.Exit(1)


@app.command()
def demo(
    speed: Annotated[float, typer.Option(help="Slow down (0.5 = half speed) for a talk.")] = 1.0,
    lesson: Annotated[bool, typer.Option(
        "--lesson", help="The article's progression instead: one address, the comma list, "
                         "static + pick_first, round_robin, the registry, weights, faults.")]
    = False,
) -> None:
    """The seed article's story in one command: weights, a crash, a freeze, a drain."""
    if speed <= 0:
        raise UsageError(f"--speed must be > 0, got {speed}")
    if lesson:
        from devcluster.lesson import run_lesson

        if not run_lesson(out, speed):
            fail("some step did not behave as the article says (see the table above)")
        return
    from devcluster.demo import run_demo

    if not run_demo(out, speed):
        fail("some step did not behave as expected (see the table above)")


def main() -> None:
    """Console entry point: one line on stderr and a status for every user mistake."""
    try:
        code = app(standalone_mode=False)
    except DevclusterError as e:
        err.print(f"[red]devcluster: error:[/red] {e}", markup=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:
        # typer's click (vendored or not) raises these; match by shape, not import path.
        if type(e).__name__ == "Abort":
            sys.exit(130)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"[red]devcluster: error:[/red] {e.format_message()}{hint}", markup=True)
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
