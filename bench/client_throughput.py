"""BalancedChannel against grpc's own round_robin, on three real greeters.

``python -m bench.client_throughput [--seconds 5] [--rounds 2]`` starts three
greeters on free ports, registers them in a throw-away FileRegistry, and measures
in the same run, alternating rounds so both sides see the same machine state:

* sequential unary calls (one at a time): calls/s, p50/p99 latency;
* 64 calls in flight with grpc.aio: calls/s, p50/p99 latency;

for ``BalancedChannel``/``AioBalancedChannel`` (also with ``hedge_after=0.1``, whose
hedges never fire here: the price of being ready to hedge) and for one native channel
with ``grpc.lb_policy_name=round_robin`` over the same three addresses. ``ratio`` is
ours/native calls/s (> 1.0: ours is faster); ``CPU us/call`` is the client
process's CPU time (grpc's threads included) per call, steadier than calls/s on
a busy machine. Then the delay from a registry write to the picker using it.

Last, scale (``--scale 3,100``): the same channels over 3 and over 100 instances,
and native round_robin over the same addresses for reference, alternating rounds.
So that only the client's side differs, every instance is one port of a single
quiet Greeter server process (100 greeter processes would measure the machine's
memory and scheduler instead); a client opens one connection per instance either way.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
from rich.console import Console
from rich.table import Table

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client.aio import AioBalancedChannel
from devcluster.client.channel import BalancedChannel
from devcluster.registry.file import FileRegistry
from devcluster.registry.record import Record, State

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 64
SCALE_SIZES = (3, 100)  # instances of the scale figure: the goal compares the last to the first
HEDGE = 0.1  # hedge_after of the "hedge" sides: never reached on healthy greeters
REQUEST = helloworld_pb2.HelloRequest(name="bench")


@contextmanager
def greeters(n: int = 3) -> Iterator[list[tuple[str, str, int, float]]]:
    """Start ``n`` greeters on free ports; yield (name, address, pid, started_at)."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "devcluster.greeter", "--port", "0", "--name", f"server{i}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for i in range(1, n + 1)]
    try:
        out = []
        for i, proc in enumerate(procs, 1):
            port = _wait_port(proc)
            address = f"127.0.0.1:{port}"
            with grpc.insecure_channel(address) as ch:
                grpc.channel_ready_future(ch).result(timeout=10)
            out.append((f"server{i}", address, proc.pid, psutil.Process(proc.pid).create_time()))
        yield out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _wait_port(proc: subprocess.Popen[bytes]) -> int:
    # Polled: a greeter on port 0 says where it listens only through its socket.
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for conn in psutil.Process(proc.pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                return int(conn.laddr.port)
        time.sleep(0.01)
    raise RuntimeError(f"greeter pid {proc.pid} did not listen within 10 s")


class Result:
    """Calls and latencies (seconds) of one side over all rounds."""

    def __init__(self) -> None:
        self.calls = 0
        self.elapsed = 0.0
        self.cpu = 0.0
        self.latencies: list[float] = []

    @property
    def cpu_us(self) -> float:
        """Client CPU (all threads, grpc's included) per call, in microseconds."""
        return self.cpu / self.calls * 1e6 if self.calls else 0.0

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0


def run_sync(call: Callable[[], Any], seconds: float, result: Result) -> None:
    """Sequential calls for ``seconds``."""
    for _ in range(200):  # warm-up: connections up, caches filled
        call()
    perf = time.perf_counter
    lat = result.latencies
    end = perf() + seconds
    start = perf()
    cpu = time.process_time()
    n = 0
    while True:
        t0 = perf()
        if t0 >= end:
            break
        call()
        lat.append(perf() - t0)
        n += 1
    result.calls += n
    result.elapsed += perf() - start
    result.cpu += time.process_time() - cpu


async def run_aio(call: Callable[[], Awaitable[Any]], seconds: float, result: Result) -> None:
    """``IN_FLIGHT`` concurrent callers for ``seconds``."""
    await asyncio.gather(*(call() for _ in range(200)))
    perf = time.perf_counter
    lat = result.latencies
    end = perf() + seconds
    counts = [0]

    async def worker() -> None:
        while True:
            t0 = perf()
            if t0 >= end:
                return
            await call()
            lat.append(perf() - t0)
            counts[0] += 1

    start = perf()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    result.calls += counts[0]
    result.elapsed += perf() - start
    result.cpu += time.process_time() - cpu


def native_target(addresses: list[str]) -> str:
    return "ipv4:" + ",".join(addresses)


NATIVE_OPTIONS = [("grpc.lb_policy_name", "round_robin")]


def bench(seconds: float, rounds: int, state_dir: Path, addresses: list[str]) -> dict[str, Result]:
    results = {f"{side}_{mode}": Result() for mode in ("sync", "aio")
               for side in ("ours", "native", "hedge")}
    per_round = seconds / rounds
    ours = BalancedChannel("server", state_dir)
    hedged = BalancedChannel("server", state_dir, hedge_after=HEDGE)
    native = grpc.insecure_channel(native_target(addresses), options=NATIVE_OPTIONS)
    sides = [(helloworld_pb2_grpc.GreeterStub(ch).SayHello, key)
             for ch, key in ((ours, "ours_sync"), (native, "native_sync"), (hedged, "hedge_sync"))]
    try:
        for i in range(rounds):
            # ABBA order: neither side always runs right after a switch.
            for call, key in sides if i % 2 == 0 else sides[::-1]:
                run_sync(functools.partial(call, REQUEST, timeout=5), per_round, results[key])
    finally:
        ours.close()
        hedged.close()
        native.close()

    async def aio() -> None:
        ours = AioBalancedChannel("server", state_dir)
        hedged = AioBalancedChannel("server", state_dir, hedge_after=HEDGE)
        native = grpc.aio.insecure_channel(native_target(addresses), options=NATIVE_OPTIONS)
        sides = [(helloworld_pb2_grpc.GreeterStub(ch).SayHello, key)
                 for ch, key in ((ours, "ours_aio"), (native, "native_aio"),
                                 (hedged, "hedge_aio"))]
        try:
            for i in range(rounds):
                for call, key in sides if i % 2 == 0 else sides[::-1]:
                    await run_aio(functools.partial(call, REQUEST, timeout=5), per_round,
                                  results[key])
        finally:
            await ours.close()
            await hedged.close()
            await native.close()

    asyncio.run(aio())
    return results


def view_latency(state_dir: Path, writes: int = 200) -> tuple[list[float], list[float]]:
    """Seconds from each registry write (its start, its return) to the picker using it."""
    registry = FileRegistry(state_dir)
    from_start, from_return = [], []
    with BalancedChannel("server", state_dir) as channel:
        for i in range(writes):
            weight = 2 + i % 2
            t0 = time.perf_counter()
            registry.update("server1", weight=weight)
            t1 = time.perf_counter()
            # Polled (briefly): the picker's view has no public change event.
            while channel.balancer.weights().get("server1") != weight:
                time.sleep(0.0002)
            t2 = time.perf_counter()
            from_start.append(t2 - t0)
            from_return.append(t2 - t1)
            time.sleep(0.02)
        registry.update("server1", weight=1)
    return from_start, from_return


class _QuietGreeter(helloworld_pb2_grpc.GreeterServicer):
    async def SayHello(self, request: Any, context: Any) -> Any:
        return helloworld_pb2.HelloReply(message=f"Hello {request.name}")


async def _serve_ports(n: int) -> None:
    """Serve Greeter on ``n`` free ports of 127.0.0.1; print them; run until stdin closes."""
    server = grpc.aio.server()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(_QuietGreeter(), server)
    ports = [server.add_insecure_port("127.0.0.1:0") for _ in range(n)]
    await server.start()
    print(",".join(map(str, ports)), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(0)


@contextmanager
def port_server(n: int) -> Iterator[tuple[list[str], int, float]]:
    """One Greeter process on ``n`` ports: (addresses, pid, started_at)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.client_throughput", "--serve-ports", str(n)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server says its ports once it serves
        if not line.strip():
            raise RuntimeError("the port server did not start")
        addresses = [f"127.0.0.1:{port}" for port in line.strip().split(",")]
        yield addresses, proc.pid, psutil.Process(proc.pid).create_time()
    finally:
        proc.kill()
        proc.wait()


def scale(sizes: tuple[int, ...] = SCALE_SIZES, seconds: float = 5.0,
          rounds: int = 4) -> dict[str, Any]:
    """Calls/s over each number of instances: BalancedChannel and AioBalancedChannel
    (keys ``sync_N``, ``aio_N``), and native round_robin over the same addresses
    (``native_sync_N``, ``native_aio_N``), alternating rounds."""
    rounds = max(1, rounds)
    per_round = seconds / rounds
    results = {f"{side}{mode}_{n}": Result() for side in ("", "native_")
               for mode in ("sync", "aio") for n in sizes}
    with port_server(max(sizes)) as (addresses, pid, started_at), \
            tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        dirs = {}
        for n in sizes:
            dirs[n] = Path(tmp) / f"n{n}"
            FileRegistry(dirs[n]).reset(
                Record(f"server{i:03d}", "server", address, state=State.SERVING, pid=pid,
                       started_at=started_at) for i, address in enumerate(addresses[:n]))
        channels: dict[str, Any] = {}
        for n in sizes:
            channels[f"sync_{n}"] = BalancedChannel("server", dirs[n])
            channels[f"native_sync_{n}"] = grpc.insecure_channel(
                native_target(addresses[:n]), options=NATIVE_OPTIONS)
        try:
            for i in range(rounds):
                for key in list(channels) if i % 2 == 0 else list(channels)[::-1]:
                    stub = helloworld_pb2_grpc.GreeterStub(channels[key]).SayHello
                    run_sync(functools.partial(stub, REQUEST, timeout=5), per_round, results[key])
        finally:
            for channel in channels.values():
                channel.close()
        asyncio.run(_scale_aio(sizes, dirs, addresses, rounds, per_round, results))
    return {"sizes": list(sizes), **{key: _figures(r) for key, r in results.items()}}


async def _scale_aio(sizes: tuple[int, ...], dirs: dict[int, Path], addresses: list[str],
                     rounds: int, per_round: float, results: dict[str, Result]) -> None:
    channels: dict[str, Any] = {}
    for n in sizes:
        channels[f"aio_{n}"] = AioBalancedChannel("server", dirs[n])
        channels[f"native_aio_{n}"] = grpc.aio.insecure_channel(
            native_target(addresses[:n]), options=NATIVE_OPTIONS)
    try:
        for i in range(rounds):
            for key in list(channels) if i % 2 == 0 else list(channels)[::-1]:
                stub = helloworld_pb2_grpc.GreeterStub(channels[key]).SayHello
                await run_aio(functools.partial(stub, REQUEST, timeout=5), per_round,
                              results[key])
    finally:
        for channel in channels.values():
            await channel.close()


def _figures(r: Result) -> dict[str, Any]:
    return {"calls": r.calls, "seconds": round(r.elapsed, 3), "calls_per_s": r.rate,
            "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "cpu_us_per_call": r.cpu_us}


def report_scale(raw: dict[str, Any], console: Console) -> None:
    sizes = raw["sizes"]
    table = Table(title="More instances: one Greeter process, one port per instance")
    for col in ("mode", "channel", "instances", "calls/s", "p50 ms", "CPU us/call",
                f"vs {sizes[0]}"):
        table.add_column(col, justify="left" if col in ("mode", "channel") else "right")
    for mode, label in (("sync", "sequential"), ("aio", f"aio x{IN_FLIGHT}")):
        for side, name in (("", "balanced"), ("native_", "native rr")):
            base = raw[f"{side}{mode}_{sizes[0]}"]["calls_per_s"]
            for n in sizes:
                f = raw[f"{side}{mode}_{n}"]
                table.add_row(label if not side and n == sizes[0] else "",
                              name if n == sizes[0] else "", str(n),
                              f"{f['calls_per_s']:,.0f}", f"{f['p50_ms']:.3f}",
                              f"{f['cpu_us_per_call']:.0f}",
                              f"{f['calls_per_s'] / base:.3f}x" if base else "-")
    console.print(table)


def report(results: dict[str, Result], console: Console) -> None:
    table = Table(title=f"BalancedChannel vs grpc round_robin: 3 greeters, {os.cpu_count()} CPUs")
    for col in ("mode", "channel", "calls/s", "p50 ms", "p99 ms", "CPU us/call", "ratio"):
        table.add_column(col, justify="left" if col in ("mode", "channel") else "right")
    for mode, label in (("sync", "sequential"), ("aio", f"aio x{IN_FLIGHT}")):
        ours, native = results[f"ours_{mode}"], results[f"native_{mode}"]
        ratio = ours.rate / native.rate if native.rate else float("nan")
        table.add_row(label, "balanced", f"{ours.rate:,.0f}", f"{ours.pct(0.5):.3f}",
                      f"{ours.pct(0.99):.3f}", f"{ours.cpu_us:.0f}", f"{ratio:.3f}x")
        table.add_row("", "native rr", f"{native.rate:,.0f}", f"{native.pct(0.5):.3f}",
                      f"{native.pct(0.99):.3f}", f"{native.cpu_us:.0f}", "")
        hedged = results[f"hedge_{mode}"]
        ratio = hedged.rate / native.rate if native.rate else float("nan")
        table.add_row("", f"hedge_after={HEDGE}", f"{hedged.rate:,.0f}", f"{hedged.pct(0.5):.3f}",
                      f"{hedged.pct(0.99):.3f}", f"{hedged.cpu_us:.0f}", f"{ratio:.3f}x")
    console.print(table)
    for key, when in (("view_start", "start"), ("view_return", "return")):
        if key in results:
            view = results[key]
            console.print(f"registry write ({when}) -> picker uses it: p50 {view.pct(0.5):.1f}"
                          f" ms, p99 {view.pct(0.99):.1f} ms over {len(view.latencies)} writes")


def run(seconds: float, rounds: int, writes: int = 200) -> dict[str, Result]:
    """Start three greeters, measure both channels (and the registry-to-picker delay)."""
    with greeters() as started, tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        state_dir = Path(tmp) / ".devcluster"
        FileRegistry(state_dir).reset(
            Record(name, "server", address, state=State.SERVING, pid=pid, started_at=started_at)
            for name, address, pid, started_at in started)
        results = bench(seconds, max(1, rounds), state_dir,
                        [address for _, address, _, _ in started])
        results["view_start"], results["view_return"] = Result(), Result()
        results["view_start"].latencies, results["view_return"].latencies = \
            view_latency(state_dir, writes)
    return results


def figures(results: dict[str, Result]) -> dict[str, Any]:
    """JSON-ready figures of :func:`run`: calls/s, p50/p99 ms, CPU us/call per side."""
    out: dict[str, Any] = {"in_flight": IN_FLIGHT}
    for key, r in results.items():
        out[key] = _figures(r)
        if key.startswith("view_"):
            out[key] = {"writes": len(r.latencies), "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99)}
    return out


def measure(seconds: float = 5.0, rounds: int = 4, writes: int = 200,
            scale_sizes: tuple[int, ...] = SCALE_SIZES) -> dict[str, Any]:
    """Scenarios 3 and 4 as JSON-ready figures (see :func:`figures`); with
    ``scale_sizes``, also :func:`scale` over those numbers of instances (key ``scale``)."""
    out = figures(run(seconds, rounds, writes))
    if len(scale_sizes) > 1:
        out["scale"] = scale(tuple(scale_sizes), seconds, rounds)
    return out


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measuring time per side and mode (default 5)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternate ours/native this many times (default 4)")
    parser.add_argument("--writes", type=int, default=200,
                        help="registry writes for the write-to-picker delay (default 200)")
    parser.add_argument("--scale", type=_sizes, default=SCALE_SIZES, metavar="N,N",
                        help="also compare the channel over these numbers of instances "
                             "(default 3,100; one number: skip)")
    parser.add_argument("--scale-only", action="store_true",
                        help="measure only the scale figure")
    parser.add_argument("--serve-ports", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_ports:
        asyncio.run(_serve_ports(args.serve_ports))
        return 0
    console = Console()
    if not args.scale_only:
        report(run(args.seconds, args.rounds, args.writes), console)
    if len(args.scale) > 1:
        report_scale(scale(args.scale, args.seconds, args.rounds), console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
