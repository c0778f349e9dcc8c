"""An unmodified grpcio client of ``xds:///<service>``, driven over stdin/stdout (JSON lines).

Run in a subprocess with ``GRPC_XDS_BOOTSTRAP`` in its environment (grpc reads it when
the channel is made). It prints ``{"ready": ...}`` once the channel is ready, then answers
one line per command:

* ``{"op": "count", "n": N}``: N calls in a row -> ``{"counts": {instance: n}, "errors": {code: n}}``;
* ``{"op": "start", "threads": T, "delay_ms": D, "timeout": S}``: keep calling in the
  background, T calls at a time (default 1), each asking the greeter to take D ms
  (``devcluster-delay-ms``), with a deadline of S seconds (default 5);
* ``{"op": "await", "present"|"absent": NAME, "since": T, "k": K, "timeout": S}``: wait
  until a background call started after wall-clock ``T`` lands on NAME (present), or until
  K calls in a row started after the last one on NAME miss it (absent) -> ``{"ms": ...}``,
  the time from ``T`` to that call's start (present) or the last hit's end (absent);
* ``{"op": "stop"}``: stop the background calls -> counts and errors over all of them.

Which instance served a call: its reply (``Hello x from <instance>``). A failed call is
counted under its code, with ``_AFTER_HEADERS`` appended when the server had sent its
response headers (the greeter sends them first): such a call is committed, never retried.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

CALL_TIMEOUT = 5.0
#: Appended to the code of a call that failed after the server's response headers.
COMMITTED = "_AFTER_HEADERS"


class Caller:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = helloworld_pb2_grpc.GreeterStub(self.channel)
        self.log: list[tuple[float, float, str]] = []  # (start, end, instance or CODE)
        self.cond = threading.Condition()
        self.running = False
        self.threads: list[threading.Thread] = []
        self.details: list[str] = []  # the details of every failed call, for a failing test

    def call(self, delay_ms: int = 0, timeout: float = CALL_TIMEOUT) -> tuple[float, float, str]:
        start = time.time()
        metadata = (("devcluster-delay-ms", str(delay_ms)),) if delay_ms else None
        try:
            reply = self.stub.SayHello(helloworld_pb2.HelloRequest(name="xds"), timeout=timeout,
                                       metadata=metadata)
            outcome = reply.message.rsplit(" from ", 1)[-1]
        except grpc.RpcError as e:
            # A call whose response headers had arrived was committed (gRFC A6): no retry
            # policy may replay it, as the server's application saw it.
            headers = dict(e.initial_metadata() or ())
            reached = headers.get("devcluster-instance")
            outcome = e.code().name + (COMMITTED if reached else "")
            self.details.append(f"{outcome}: {e.details()} (headers from: {reached}; call "
                                f"{start:.3f}-{time.time():.3f}, to match the logs)")
        return start, time.time(), outcome

    def count(self, n: int) -> dict[str, Any]:
        outcomes = [self.call()[2] for _ in range(n)]
        return summary(outcomes)

    def _loop(self, delay_ms: int, timeout: float) -> None:
        while self.running:
            entry = self.call(delay_ms, timeout)
            with self.cond:
                self.log.append(entry)
                self.cond.notify_all()

    def start(self, threads: int = 1, delay_ms: int = 0,
              timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        self.log, self.running = [], True
        self.threads = [threading.Thread(target=self._loop, args=(delay_ms, timeout), daemon=True)
                        for _ in range(threads)]
        for thread in self.threads:
            thread.start()
        return {"ok": True}

    def stop(self) -> dict[str, Any]:
        self.running = False
        for thread in self.threads:
            thread.join()
        out = summary([o for _, _, o in self.log])
        out["details"], self.details = self.details[:10], []
        return out

    def wait(self, since: float, present: str | None, absent: str | None, k: int,
             timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                after = [e for e in self.log if e[0] >= since]
                if present is not None:
                    hits = [e for e in after if e[2] == present]
                    if hits:
                        return {"ms": (hits[0][0] - since) * 1000, "calls": len(after)}
                else:
                    last = max((i for i, e in enumerate(after) if e[2] == absent), default=-1)
                    if len(after) - last - 1 >= k:
                        end = after[last][1] if last >= 0 else since
                        return {"ms": max(0.0, end - since) * 1000, "calls": len(after)}
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"timeout": True, "calls": len(after),
                            "seen": dict(Counter(e[2] for e in after))}
                self.cond.wait(left)


def summary(outcomes: list[str]) -> dict[str, Any]:
    counts = Counter(o for o in outcomes if not o.isupper())
    errors = Counter(o for o in outcomes if o.isupper())
    return {"counts": dict(counts), "errors": dict(errors), "calls": len(outcomes)}


def main() -> None:
    target = sys.argv[1]
    caller = Caller(target)
    try:
        grpc.channel_ready_future(caller.channel).result(timeout=20)
        print(json.dumps({"ready": True}), flush=True)
    except grpc.FutureTimeoutError:
        print(json.dumps({"ready": False}), flush=True)
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "count":
            out = caller.count(cmd["n"])
        elif op == "start":
            out = caller.start(cmd.get("threads", 1), cmd.get("delay_ms", 0),
                               cmd.get("timeout", CALL_TIMEOUT))
        elif op == "stop":
            out = caller.stop()
        elif op == "await":
            out = caller.wait(cmd["since"], cmd.get("present"), cmd.get("absent"),
                              cmd.get("k", 20), cmd.get("timeout", 10.0))
        else:
            out = {"error": f"unknown op {op}"}
        print(json.dumps(out), flush=True)
    caller.channel.close()


if __name__ == "__main__":
    main()
