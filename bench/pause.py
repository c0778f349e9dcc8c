"""Scenario 10: a frozen instance held for 10 s, where ejection and hedging show.

``python -m bench.pause [--runs 2] [--hold 10]``

The failover scenario holds a pause for a few seconds with one sequential caller, so
native round_robin and ours both lose about two calls. Held longer, the difference is
the story: round_robin keeps sending a third of its calls into the frozen server for
as long as it stays frozen, while our channel ejects it after two timeouts, and with
``hedge_after`` loses nothing at all. Each run pauses ``greeter.3`` for ``--hold``
seconds while every caller runs at once, sequential (1 in flight) and with 8 in
flight, each call with a 1 s deadline; failed calls are those that ended in an error
from the pause until 1 s after the resume.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from bench.failover import REQUEST, addresses, greeter_cluster, native_channel
from devcluster._proto import helloworld_pb2_grpc
from devcluster.api import Cluster
from devcluster.client import BalancedChannel

#: label -> how to make its channel from the cluster.
CLIENTS: dict[str, Callable[[Cluster], grpc.Channel]] = {
    "native rr": lambda c: native_channel(sorted(addresses(c).values())),
    "balanced": lambda c: BalancedChannel("greeter", c.registry, stats=False),
    "balanced+hedge": lambda c: BalancedChannel(
        "greeter", c.registry, stats=False, hedge_after=0.1,
        retry_on={grpc.StatusCode.UNAVAILABLE}),
}
IN_FLIGHT = (1, 8)


class Load:
    """``width`` threads calling SayHello in a loop on one channel; failures timestamped."""

    def __init__(self, channel: grpc.Channel, width: int) -> None:
        self.say = helloworld_pb2_grpc.GreeterStub(channel).SayHello
        self.failures: list[float] = []
        self.calls = 0
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(width)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.halt.is_set():
            try:
                self.say(REQUEST, timeout=1.0)
            except grpc.RpcError:
                self.failures.append(time.time())
            except ValueError:  # closed under us
                return
            self.calls += 1

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(5)


def one_run(cluster: Cluster, hold: float) -> dict[str, int]:
    """Failed calls per ``client/in-flight`` during one pause of ``hold`` seconds."""
    channels = {label: make(cluster) for label, make in CLIENTS.items()}
    loads = {f"{label}, {width} in flight": Load(ch, width)
             for label, ch in channels.items() for width in IN_FLIGHT}
    try:
        time.sleep(1.0)  # every caller warm: connections up, picker primed
        began = time.time()
        cluster.pause("greeter.3")
        time.sleep(hold)  # the scenario is a fixed hold: nothing to wait on
        cluster.resume("greeter.3")
        ended = time.time() + 1.0
        time.sleep(1.0)
    finally:
        for load in loads.values():
            load.stop()
        for ch in channels.values():
            ch.close()
    return {key: sum(began <= t <= ended for t in load.failures) for key, load in loads.items()}


def measure(runs: int = 2, hold: float = 10.0) -> dict[str, Any]:
    """Failed calls per run for every client and width."""
    with greeter_cluster(3) as cluster:
        per_run = [one_run(cluster, hold) for _ in range(runs)]
    keys = list(per_run[0])
    return {"hold_s": hold, "runs": runs,
            "failed": {k: [r[k] for r in per_run] for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.runs, args.hold), indent=2))


if __name__ == "__main__":
    main()
