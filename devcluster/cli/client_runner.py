"""The engine of ``devcluster client``: call a service, show who served each call.

The CLI parses flags into :class:`ClientOptions` and calls :func:`run_client`;
everything else (the calls, the lines, the closing table) happens here, so a
script or a test gets exactly what the CLI prints. The calls go through the
registry of a running cluster, a ``static:///`` list (devcluster's balancer, no
cluster needed), a grpc target (grpc's own resolver and policy) or grpc's own xDS
client on the running cluster (``xds``); lines and summary look the same in all four.

>>> from devcluster.cli.views import Terminal                           # doctest: +SKIP
>>> summary = run_client(ClientOptions("server", count=6, interval=0), Terminal())  # doctest: +SKIP
  1  server1  127.0.0.1:50051  0.7 ms  Hello world-1 from server1
  ...
>>> summary.instances["server1"].calls                                  # doctest: +SKIP
2
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

import grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.cli.targets import Target, parse_target, resolve_policy
from devcluster.cli.views import Terminal, table
from devcluster.client.calls import CallInfo
from devcluster.client.channel import BalancedChannel
from devcluster.client.direct import GrpcTargetChannel
from devcluster.client.static import static_channel
from devcluster.errors import UsageError
from devcluster.registry.base import Registry

Channel = BalancedChannel | GrpcTargetChannel


@dataclass(frozen=True)
class ClientOptions:
    """What ``devcluster client`` was asked to do.

    ``count=None`` calls until interrupted (or ``stop`` is set); ``timeout`` is each
    call's deadline; ``registry`` (a Registry object, for the API and tests)
    takes precedence over ``state_dir``; ``target`` (``static:///H:P,...`` or a grpc
    target, see :mod:`devcluster.cli.targets`) replaces both. ``policy`` None
    means ``weighted``, or grpc's ``pick_first`` for a grpc target.
    ``hedge`` is the channel's ``hedge_after`` (devcluster's balancer only).
    ``retry_on`` defaults to UNAVAILABLE:
    SayHello is idempotent, so even a call cut off by its server's crash (which
    the channel never repeats on its own) is safe to repeat elsewhere.

    >>> ClientOptions("server", count=10, interval=0).timeout
    2.0
    """

    service: str | None = None
    name: str = "world"
    count: int | None = None
    interval: float = 0.5
    concurrency: int = 1
    timeout: float = 2.0
    json: bool = False
    policy: str | None = None
    state_dir: str | os.PathLike[str] | None = None
    registry: Registry | None = None
    retry_on: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)
    target: str | None = None
    hedge: float | None = None
    where: Mapping[str, str] = field(default_factory=dict)
    """Only instances whose registry metadata has every pair (``--where``)."""
    xds: bool = False
    """Through grpc's own xDS client: ``xds:///service`` with the cluster's bootstrap
    (``state_dir`` says which cluster; ``policy``, ``hedge``, ``where`` and ``target``
    do not apply)."""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class InstanceStats:
    """Calls one instance served, attempts that failed on it, their latencies (ms)."""

    calls: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)


@dataclass
class Summary:
    """The outcome of a client run.

    ``calls`` counts every call made, ``failures`` the calls that failed in the
    end; per instance, ``calls`` are the calls it served and ``failures`` the
    attempts that failed on it (retried or not).
    """

    calls: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    instances: dict[str, InstanceStats] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)

    def add(self, info: CallInfo) -> None:
        """Count one finished call."""
        self.calls += 1
        self.latencies.append(info.latency_ms)
        for name, _code in info.retried:
            self.instances.setdefault(name, InstanceStats()).failures += 1
        if not info.ok:
            self.failures += 1
        if info.instance == "-":  # no instance was tried: nobody's to count
            return
        stats = self.instances.setdefault(info.instance, InstanceStats())
        if info.ok:
            stats.calls += 1
            stats.latencies.append(info.latency_ms)
        else:
            stats.failures += 1

    def share(self, name: str) -> float:
        """Fraction of the successful calls ``name`` served."""
        served = self.calls - self.failures
        return self.instances[name].calls / served if served else 0.0

    def weight_share(self, name: str) -> float | None:
        """Fraction of the total weight ``name`` has now (None: not usable now)."""
        total = sum(self.weights.values())
        return self.weights[name] / total if name in self.weights and total else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: totals, p50/p99, and per-instance counts and shares."""
        return {
            "calls": self.calls,
            "failures": self.failures,
            "p50_ms": round(_pct(self.latencies, 0.5), 3),
            "p99_ms": round(_pct(self.latencies, 0.99), 3),
            "instances": {
                name: {
                    "calls": s.calls,
                    "failures": s.failures,
                    "share": round(self.share(name), 4),
                    "weight": self.weights.get(name, 0),
                    "weight_share": (None if (ws := self.weight_share(name)) is None
                                     else round(ws, 4)),
                    "p50_ms": round(_pct(s.latencies, 0.5), 3),
                    "p99_ms": round(_pct(s.latencies, 0.99), 3),
                }
                for name, s in sorted(self.instances.items())
            },
        }


class _Printer:
    """Turns CallInfo into lines or JSON objects, one call at a time."""

    def __init__(self, console: Terminal, as_json: bool, channel: Channel) -> None:
        self.console = console
        self.as_json = as_json
        self.channel = channel
        self.lock = threading.Lock()

    def _address(self, name: str) -> str:
        found = [i.address for i in self.channel.instances() if i.name == name]
        return found[0] if found else ""

    def call(self, info: CallInfo) -> None:
        with self.lock:
            if self.as_json:
                self.console.print(json.dumps(info.to_dict()))
                return
            seq = f"{info.seq:>3}"
            # One line per run of identical failed attempts (a dead last instance
            # is retried many times within one deadline).
            runs = [(key, len(list(group))) for key, group in itertools.groupby(info.retried)]
            nexts = [name for (name, _), _n in runs[1:]] + [info.instance] if runs else []
            for ((name, code), n), nxt in zip(runs, nexts, strict=True):
                times = f" x{n}" if n > 1 else ""
                self.console.print(f"{seq}  {name}  {self._address(name)}  {code}{times}  "
                                   f"retried on {nxt}", "red")
            # The address is empty when nobody was tried, or for a grpc target (grpc
            # does not say which address served): the column stays, blank.
            if info.ok:
                self.console.print(f"{seq}  {self.console.paint(info.instance, 'bold')}  "
                                   f"{info.address}  {info.latency_ms:.1f} ms  {info.message}")
            else:
                self.console.print(f"{seq}  {info.instance}  {info.address}  {info.code}  "
                                   f"{info.latency_ms:.1f} ms  {info.message}  "
                                   "(failed; next call goes on)", "red")

    def summary(self, summary: Summary) -> None:
        if self.as_json:
            self.console.print(json.dumps({"summary": summary.to_dict()}))
            return
        columns = ("instance", "calls", "share", "weight share", "p50 ms", "p99 ms", "failures")
        rows = []
        for name, s in sorted(summary.instances.items()):
            ws = summary.weight_share(name)
            rows.append([(name, ""), (str(s.calls), ""), (f"{summary.share(name):.1%}", ""),
                         ("-" if ws is None else f"{ws:.1%}", ""),
                         (f"{_pct(s.latencies, 0.5):.1f}", ""),
                         (f"{_pct(s.latencies, 0.99):.1f}", ""),
                         (str(s.failures), "red" if s.failures else "")])
        total = [("all", ""), (str(summary.calls - summary.failures), ""), ("", ""), ("", ""),
                 (f"{_pct(summary.latencies, 0.5):.1f}", ""),
                 (f"{_pct(summary.latencies, 0.99):.1f}", ""), (str(summary.failures), "")]
        self.console.print(table(columns, rows, self.console.colour, right=columns[1:],
                                 title=f"{summary.calls} calls, {summary.failures} failed",
                                 footer=[total]))


def open_channel(opts: ClientOptions, on_call: Callable[[CallInfo], None] | None = None,
                 ) -> Channel:
    """The channel ``opts`` asks for: registry, static list, or a grpc target.

    Raises UsageError for a malformed target or a policy the target cannot use, or an
    option that makes no sense with ``xds``.
    """
    if opts.xds:
        from devcluster.cli.xds_channel import XdsChannel, check_options

        check_options(opts.policy, opts.hedge, opts.where, opts.target)
        if opts.state_dir is None:
            raise UsageError("--xds needs the running cluster's state dir (ClientOptions."
                             "state_dir): its bootstrap file is there")
        return XdsChannel(opts.state_dir, opts.service, opts.registry, on_call)
    target: Target | None = parse_target(opts.target) if opts.target is not None else None
    policy = resolve_policy(target, opts.policy)
    if target is None:
        return BalancedChannel(opts.service, opts.registry or opts.state_dir, policy=policy,
                               retry_on=opts.retry_on, on_call=on_call, hedge_after=opts.hedge,
                               where=opts.where)
    if target.kind == "static":
        return static_channel(target.addresses, policy=policy, retry_on=opts.retry_on,
                              on_call=on_call, hedge_after=opts.hedge)
    return GrpcTargetChannel(target.text, policy, on_call=on_call)


def _weights(channel: Channel, served_as: dict[str, str]) -> dict[str, int]:
    """Weights by the name the servers gave (a static instance is named by address
    until its server says its name)."""
    if isinstance(channel, GrpcTargetChannel):
        return channel.weights()
    addresses = {inst.name: inst.address for inst in channel.instances()}
    return {served_as.get(addresses.get(name, ""), name): weight
            for name, weight in channel.balancer.weights().items()}


def run_client(opts: ClientOptions, console: Terminal,
               stop: threading.Event | None = None, *,
               on_call: Callable[[CallInfo], None] | None = None,
               show_summary: bool = True) -> Summary:
    """Call ``opts.service`` until ``opts.count`` calls (or Ctrl-C, or ``stop``); print
    each call and a closing summary on ``console``; return the summary.

    ``on_call`` also gets every call as printed (a script watching a run);
    ``show_summary=False`` leaves out the closing table.

    >>> run_client(ClientOptions("server", count=3, interval=0), Terminal()).calls  # doctest: +SKIP
    3
    """
    stop = stop or threading.Event()
    summary = Summary()
    local = threading.local()
    tally = threading.Lock()
    served_as: dict[str, str] = {}
    watcher = on_call

    def record(info: CallInfo) -> None:
        # The request's own number, not the channel's counter, which concurrent
        # workers would interleave; for a reply, its text is the message.
        message = str(getattr(info.response, "message", "")) if info.ok else info.message
        info = replace(info, seq=local.seq, message=message)
        with tally:
            summary.add(info)
            if info.ok and info.address:
                served_as[info.address] = info.instance
        printer.call(info)
        if watcher is not None:
            watcher(info)

    channel = open_channel(opts, record)
    printer = _Printer(console, opts.json, channel)
    caller = _Caller(opts, channel, stop, local)
    try:
        _run_workers(caller.work, max(1, opts.concurrency), stop)
    finally:
        summary.weights = _weights(channel, served_as)
        channel.close()
    if show_summary:
        printer.summary(summary)
    return summary


class _Caller:
    """The calls of a run: numbered once across workers, ``opts.count`` of them (or
    until ``stop``); each worker thread runs :meth:`work`."""

    def __init__(self, opts: ClientOptions, channel: Channel, stop: threading.Event,
                 local: threading.local) -> None:
        self.opts, self.stop, self.local = opts, stop, local
        # The generated stub is untyped: say what it is once, here.
        self.stub = cast("Callable[[object], Any]", helloworld_pb2_grpc.GreeterStub)(channel)
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()

    def next_seq(self) -> int | None:
        with self.lock:
            seq = next(self.numbers)
        return None if self.opts.count is not None and seq > self.opts.count else seq

    def work(self) -> None:
        opts = self.opts
        while not self.stop.is_set():
            seq = self.next_seq()
            if seq is None:
                return
            self.local.seq = seq  # record() numbers the call it sees in this thread
            with contextlib.suppress(grpc.RpcError):  # on_call has printed and counted it
                self.stub.SayHello(helloworld_pb2.HelloRequest(name=f"{opts.name}-{seq}"),
                                   timeout=opts.timeout)
            if opts.interval > 0 and (opts.count is None or seq < opts.count):
                self.stop.wait(opts.interval)


def _run_workers(worker: Callable[[], None], n: int, stop: threading.Event) -> None:
    """Run ``worker`` in ``n`` threads (1: this thread); Ctrl-C stops them all."""
    if n == 1:
        try:
            worker()
        except KeyboardInterrupt:
            stop.set()
        return
    threads = [threading.Thread(target=worker, name=f"devcluster-client-{i}", daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            # Join in slices: a join without timeout would not let Ctrl-C through.
            while t.is_alive():
                t.join(0.1)
    except KeyboardInterrupt:
        stop.set()
        deadline = time.monotonic() + 5
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
