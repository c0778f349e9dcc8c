"""``call`` (any unary method, through the balancing client) and ``meta``."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from devcluster.cli.app import (
    DEFAULT_PROCFILE,
    JsonOpt,
    ProcfileOpt,
    RegistryOpt,
    StateDirOpt,
    _is_etcd,
    _registry,
    _state_dir,
    app,
    err,
    out,
)
from devcluster.cli.tools import WhereOpt
from devcluster.errors import DevclusterError, NoClusterError, UsageError

if TYPE_CHECKING:  # grpc loads when a call is made, not with every command
    import grpc

#: Seconds each call may take (a generic method may be slower than SayHello).
DEFAULT_CALL_TIMEOUT = 5.0


@app.command()
def call(
    method: Annotated[str, typer.Argument(
        metavar="METHOD",
        help="package.Service/Method, as grpcurl writes it, e.g. helloworld.Greeter/SayHello.")],
    data: Annotated[str, typer.Option("--data", "-d", metavar="JSON", help="The request as JSON.")] = "{}",
    count: Annotated[int, typer.Option("--count", "-n", metavar="N", help="Calls to make.")] = 1,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between calls.")] = 0.0,
    service: Annotated[str | None, typer.Option(metavar="SERVICE", help="Only instances of this service "
                                                     "(default: every serving instance).")]
    = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Deadline of each call, seconds.")]
    = DEFAULT_CALL_TIMEOUT,
    proto: Annotated[Path | None, typer.Option(
        metavar="FILE", help="A .proto defining the method, for servers without reflection "
             "(compiled now with grpcio-tools).", show_default=False)] = None,
    import_path: Annotated[list[Path], typer.Option(
        "--import-path", "-I", metavar="DIR", help="Where --proto's imports are (repeatable).")]
    = [],  # noqa: B006 - typer reads the default, never mutates it
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per call, as "
                                                        "`client --json`, plus `reply`.")] = False,
    registry: RegistryOpt = None,
    where: WhereOpt = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Call any unary method through the balancing client; print who answered each call.

    The request and reply types come from the server's reflection service, or from
    --proto for a server without it.

    Example: devcluster call helloworld.Greeter/SayHello -d '{"name": "x"}' -n 6"""
    from devcluster.client import dynamic
    from devcluster.config.check import parse_where

    ref = dynamic.parse_method(method)
    matching = parse_where(where)
    if count < 1 or interval < 0 or timeout <= 0:
        raise UsageError("--count must be >= 1, --interval >= 0 and --timeout > 0")
    if import_path and proto is None:
        raise UsageError("-I/--import-path is for --proto's imports; pass --proto FILE too")
    target = None
    if proto is not None:  # a bad file or request is a usage error before any cluster
        pool = dynamic.compile_proto(proto, import_path)
        target = dynamic.method_from_pool(pool, ref,
                                          dynamic.proto_services(pool, proto, import_path))
        target.request(data)
    reg = _where(procfile, state_dir, registry)
    if target is None:
        target, service = _reflect(reg, service, ref, matching)
    sink: list[Callable[[Any], None]] = []
    from devcluster.client import BalancedChannel

    with BalancedChannel(service, reg, on_call=lambda info: [f(info) for f in sink],
                         where=matching) as ch:
        failures = _calls(ch, target, target.request(data), count, interval, timeout, json_,
                          sink)
    if failures:
        raise typer.Exit(1)


def _where(procfile: Path, state_dir: Path | None, registry: str | None) -> Any:
    """The registry to balance over, as ``client`` finds it; NoClusterError if none."""
    if _is_etcd(registry):
        return _registry(procfile, state_dir, registry)
    directory = _state_dir(procfile, state_dir)
    if not (directory / "registry.json").exists():
        raise NoClusterError(f"no registry in {directory}; start a cluster with "
                             "`devcluster up` (or pass --state-dir)")
    return directory


def _reflect(where: Any, service: str | None, ref: Any,
             matching: dict[str, str] | None = None) -> tuple[Any, str | None]:
    """The method's types from the servers' reflection, and the service to call.

    Asks one serving instance of each registry service (of ``service`` only, if
    given); without --service, calls then go to the one service that knows the
    method, if exactly one does.
    """
    from devcluster.client import dynamic
    from devcluster.registry import Registry, open_registry

    reg = where if isinstance(where, Registry) else open_registry(where)
    addresses: dict[str, str] = {}
    for record in reg.snapshot().usable(service):
        if all(record.metadata.get(k) == v for k, v in (matching or {}).items()):
            addresses.setdefault(record.service, record.address)
    if not addresses:
        which = " where " + " ".join(f"{k}={v}" for k, v in matching.items()) if matching else ""
        raise DevclusterError(f"no serving instance{f' of service {service!r}' if service else ''}"
                              f"{which}; start it (`devcluster up`, `devcluster start NAME`) "
                              "or check --service and --where")
    method, knowing = dynamic.find_by_reflection(addresses, ref)
    return method, service or (knowing[0] if len(knowing) == 1 else None)


def _calls(channel: grpc.Channel, target: Any, request: Any, count: int, interval: float,
           timeout: float, as_json: bool, sink: list[Callable[[Any], None]]) -> int:
    """Make ``count`` calls, printing one line per call; returns how many failed."""
    current = [0]  # the number of the call in flight (the channel's own counter differs)
    failed: list[str] = []

    def record(info: Any) -> None:
        info = replace(info, seq=current[0])
        if not info.ok:
            failed.append(info.code)
        _print_call(info, target, as_json)

    sink.append(record)
    callable_ = target.multicallable(channel)
    stop = threading.Event()
    for seq in range(1, count + 1):
        current[0] = seq
        import grpc

        with contextlib.suppress(grpc.RpcError):  # record() has printed it
            callable_.with_call(request, timeout=timeout)
        if interval and seq < count:
            stop.wait(interval)
    if "UNIMPLEMENTED" in failed:
        err.print(f"devcluster: note: some instances do not serve {target.ref.service}; "
                  "pick the ones that do with --service NAME", markup=False)
    return len(failed)


def _print_call(info: Any, target: Any, as_json: bool) -> None:
    reply = target.reply_dict(info.response) if info.ok and info.response is not None else None
    if as_json:
        out.out(json.dumps({**info.to_dict(), "reply": reply}), highlight=False)
        return
    seq = f"{info.seq:>3}"
    for name, code in info.retried:
        out.print(f"[red]{seq}  {escape(name)}  {code}  retried[/red]", highlight=False)
    if info.ok:
        out.print(f"{seq}  [bold]{escape(info.instance)}[/bold]  {info.address}  "
                  f"{info.latency_ms:.1f} ms  {escape(json.dumps(reply))}", highlight=False)
    else:
        out.print(f"[red]{seq}  {escape(info.instance)}  {info.address}  {info.code}  "
                  f"{info.latency_ms:.1f} ms  {escape(info.message)}[/red]", highlight=False)


@app.command()
def meta(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Instance name, e.g. echo.1.")],
    items: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...",
                                               help="KEY=VALUE to set, KEY= to remove.")],
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    registry: RegistryOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Set an instance's registry metadata (KEY=VALUE), or remove a key (KEY=).

    Clients pick instances by it: devcluster client --where zone=b.

    Example: devcluster meta echo.1 zone=b canary="""
    from devcluster.api import set_metadata
    from devcluster.cli.render import _print_instances
    from devcluster.config.check import parse_meta_items
    from devcluster.schema import InstanceInfo

    changes = parse_meta_items(items)
    record = set_metadata(_registry(procfile, state_dir, registry), name, changes)
    if json_:
        _print_instances([InstanceInfo.from_record(record).to_dict()], True)
        return
    pairs = " ".join(f"{k}={v}" for k, v in sorted(record.metadata.items()))
    out.print(f"{record.name} metadata: {pairs or '(none)'}", markup=False)
