"""``call`` (any unary method, through the balancing client) and ``meta``."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from devcluster.cli import views
from devcluster.cli.interrupt import stop_on_signals
from devcluster.cli.place import Place
from devcluster.errors import DevclusterError, UsageError

if TYPE_CHECKING:  # grpc loads when a call is made, not with every command
    import grpc

    from devcluster.registry import Registry


def call(at: Place, method: str, data: str, count: int, interval: float, service: str | None,
         timeout: float, proto: str | None, import_path: list[str], as_json: bool,
         where: list[str]) -> int:
    """Make ``count`` calls of ``method``, one line each; exit 1 if any failed."""
    from pathlib import Path

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
        paths = [Path(p) for p in import_path]
        pool = dynamic.compile_proto(Path(proto), paths)
        target = dynamic.method_from_pool(pool, ref,
                                          dynamic.proto_services(pool, Path(proto), paths))
        target.request(data)
    at.require_registry("or pass --state-dir")
    reg = at.registry()
    if target is None:
        target, service = _reflect(reg, service, ref, matching)
    sink: list[Callable[[Any], None]] = []
    from devcluster.client import BalancedChannel

    def on_call(info: Any) -> None:
        for f in sink:
            f(info)

    # A file registry by its state dir, as ``client`` has it (the channel follows the file).
    source: Registry | str = reg if at.is_etcd else str(at.state_dir)
    with stop_on_signals(), BalancedChannel(service, source, on_call=on_call,
                                            where=matching) as ch:
        failures = _calls(ch, target, target.request(data), count, interval, timeout, as_json,
                          sink)
    return 1 if failures else 0


def _reflect(reg: Registry, service: str | None, ref: Any,
             matching: dict[str, str] | None = None) -> tuple[Any, str | None]:
    """The method's types from the servers' reflection, and the service to call.

    Asks one serving instance of each registry service (of ``service`` only, if
    given); without --service, calls then go to the one service that knows the
    method, if exactly one does.
    """
    from devcluster.client import dynamic

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
        views.note(f"note: some instances do not serve {target.ref.service}; "
                   "pick the ones that do with --service NAME")
    return len(failed)


def _print_call(info: Any, target: Any, as_json: bool) -> None:
    reply = target.reply_dict(info.response) if info.ok and info.response is not None else None
    if as_json:
        print(json.dumps({**info.to_dict(), "reply": reply}), flush=True)
        return
    colour = views.use_colour(sys.stdout)
    seq = f"{info.seq:>3}"
    for name, code in info.retried:
        print(views.paint(f"{seq}  {name}  {code}  retried", "red", colour))
    if info.ok:
        print(f"{seq}  {views.paint(info.instance, 'bold', colour)}  {info.address}  "
              f"{info.latency_ms:.1f} ms  {json.dumps(reply)}", flush=True)
    else:
        print(views.paint(f"{seq}  {info.instance}  {info.address}  {info.code}  "
                          f"{info.latency_ms:.1f} ms  {info.message}", "red", colour), flush=True)


def meta(at: Place, name: str, items: list[str], as_json: bool) -> views.Output:
    """Set or remove metadata keys of one instance; the record after."""
    from devcluster.config.check import parse_meta_items
    from devcluster.control.access import set_metadata
    changes = parse_meta_items(items)
    reg = at.registry()
    try:
        record = set_metadata(reg, name, changes)
    finally:
        reg.close()
    pairs = " ".join(f"{k}={v}" for k, v in sorted(record.metadata.items()))
    return views.Output([views.record_row(record)],
                        f"{record.name} metadata: {pairs or '(none)'}")
