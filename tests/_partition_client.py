"""The client of the partition test, run inside one of its network namespaces.

    python tests/_partition_client.py ETCD_URL SERVICE OUT_JSON STOP_FILE

Calls SayHello on every usable instance of SERVICE (a BalancedChannel over the etcd
registry, hedging after HEDGE_S) back to back, and follows the registry with a watch
of its own. Every ~0.2 s, and once more when STOP_FILE appears (then it exits),
OUT_JSON is replaced (write, then rename) with what it saw, timestamped on the
machine's monotonic clock, which every namespace shares with the test::

    {"calls": [[start, end, instance, ok, [instances tried first]], ...],
     "views": [[time, [instance names in the registry]], ...],
     "channel": [instance names the channel holds],       # at the last write
     "keys": [[etcd key, lease id], ...]}                  # null: etcd did not answer
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import etcd3gw
import grpc

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.client import BalancedChannel, CallInfo
from devcluster.registry.etcd import EtcdRegistry

#: A call unanswered this long goes to another instance too (a partitioned one hangs).
HEDGE_S = 0.1
CALL_TIMEOUT_S = 3.0
CALL_EVERY_S = 0.02
WRITE_EVERY_S = 0.2


class Seen:
    """What the client saw, shared by the calling loop and the registry watcher."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[list[Any]] = []
        self.views: list[list[Any]] = []

    def view(self, names: list[str]) -> None:
        with self.lock:
            if not self.views or self.views[-1][1] != names:
                self.views.append([time.monotonic(), names])

    def dump(self, channel: BalancedChannel, out: Path, keys: list[list[Any]] | None) -> None:
        with self.lock:
            data = {"calls": list(self.calls), "views": list(self.views),
                    "channel": sorted(i.name for i in channel.balancer.instances()),
                    "keys": keys}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, out)


def _watch(registry: EtcdRegistry, seen: Seen, stop: threading.Event) -> None:
    for snapshot in registry.watch(stop=stop):
        seen.view(sorted(snapshot.records))


def _keys(client: Any, registry: EtcdRegistry) -> list[list[Any]] | None:
    """Every key under the registry's instances prefix, with its lease (raw etcd);
    None if etcd did not answer."""
    try:
        rows = client.get_prefix(registry.key(""))
    except Exception:  # a report without keys this time
        return None
    return sorted([meta["key"].decode(), int(meta.get("lease", 0))] for _value, meta in rows)


def main(url: str, service: str, out: Path, stop_file: Path) -> int:
    registry = EtcdRegistry(url)
    etcd = etcd3gw.client(host=registry.target.host, port=registry.target.port, timeout=2)
    seen, stop = Seen(), threading.Event()
    watcher = threading.Thread(target=_watch, args=(registry, seen, stop), daemon=True)
    watcher.start()

    def on_call(info: CallInfo) -> None:
        end = time.monotonic()
        with seen.lock:
            seen.calls.append([end - info.latency_ms / 1000, end, info.instance, info.ok,
                               [name for name, _code in info.retried]])

    with BalancedChannel(service, registry, hedge_after=HEDGE_S, on_call=on_call) as channel:
        stub = GreeterStub(channel)
        next_write = 0.0
        while not stop_file.exists():
            with contextlib.suppress(grpc.RpcError):  # on_call books it as failed
                stub.SayHello(HelloRequest(name="partition"), timeout=CALL_TIMEOUT_S)
            time.sleep(CALL_EVERY_S)
            if time.monotonic() >= next_write:
                seen.dump(channel, out, _keys(etcd, registry))
                next_write = time.monotonic() + WRITE_EVERY_S
        stop.set()
        seen.dump(channel, out, _keys(etcd, registry))
    watcher.join(5)
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])))
