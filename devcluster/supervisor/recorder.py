"""The supervisor's registry writer: one thread, writes in order, off the event loop.

A registry write is a file fsync (file backend) or an HTTP round trip with a 5 s
timeout (etcd). On the event loop either would stall signal handling, control calls
and readiness probes, so the supervisor only queues writes here and goes on. Updates
queued while a write is in progress are merged into one write (one fsync, one
revision): at N=30 a start-up burst of ~60 state changes costs a handful of writes.

Every call returns a :class:`concurrent.futures.Future` the caller may await (via
``asyncio.wrap_future``) when order against the outside world matters, e.g. the
``draining`` that must reach watchers before SIGINT; it resolves to the registry's
revision after the write (:data:`Written`), the number watchers report having applied
(:mod:`devcluster.supervisor.drain`). A failed write is reported to
``on_error`` (the supervisor logs it) and never stops the writer.

The supervisor's memory is the truth (``truth()``): a registry found corrupt (kept
aside) or missing the records of running instances is rewritten from it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from devcluster.errors import CorruptRegistryError
from devcluster.registry import Record, Registry, Snapshot

Changes = dict[str, dict[str, Any]]
#: A queued write: resolves to the registry's revision once it landed (None when the
#: write returned none: a register or deregister), or to its exception.
Written = Future[int | None]
#: The writes that leave :attr:`Recorder.last` at the registry they made.
_SNAPSHOT_KINDS = frozenset({"update", "reset", "rewrite"})


class _Op:
    __slots__ = ("arg", "future", "kind")

    def __init__(self, kind: str, arg: Any) -> None:
        self.kind = kind
        self.arg = arg
        self.future: Written = Future()


class Recorder:
    """Queue registry writes; a daemon thread applies them in order."""

    def __init__(self, registry: Registry, on_error: Callable[[str], None],
                 before_write: Callable[[], None] | None = None,
                 truth: Callable[[], list[Record]] = list) -> None:
        self.registry = registry
        #: The registry as last written by us: weights and flags when it is unreadable.
        self.last: Snapshot | None = None
        #: The registry's revision after our last write that returned one (None: none yet).
        self.revision: int | None = None
        #: Instance name -> why its last write failed (cleared by a write that lands).
        self.failures: dict[str, str] = {}
        self._truth = truth
        self._on_error = on_error
        #: Called before every write; raises to refuse it (the state dir is not ours).
        self.before_write = before_write
        self._ops: deque[_Op] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="devcluster-registry",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<Recorder {self.registry!r} {len(self._ops)} queued>"

    # -- queueing (any thread) ---------------------------------------------------------

    def _put(self, kind: str, arg: Any) -> Written:
        op = _Op(kind, arg)
        with self._cond:
            if self._closed:
                op.future.set_result(None)  # shutting down: the write is dropped, on purpose
                return op.future
            self._ops.append(op)
            self._cond.notify()
        return op.future

    def update(self, name: str, **fields: Any) -> Written:
        """Change fields of one record (skipped if the record is gone by then)."""
        return self._put("update", {name: dict(fields)})

    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> Written:
        return self._put("update", {n: dict(f) for n, f in changes.items()})

    def register(self, record: Record) -> Written:
        return self._put("register", record)

    def deregister(self, name: str) -> Written:
        return self._put("deregister", name)

    def reset(self, records: Iterable[Record]) -> Written:
        return self._put("reset", list(records))

    def rewrite(self, why: str) -> Written:
        """Write every record from the supervisor's memory (the registry was lost)."""
        return self._put("rewrite", why)

    def flush(self) -> Written:
        """A future that resolves once every write queued before it was applied (or failed)."""
        return self._put("flush", None)

    def close(self, timeout: float) -> bool:
        """Apply what is queued (up to ``timeout`` s), then stop. False if writes were left."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- writing (the writer thread) ---------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._closed:
                    self._cond.wait()
                if not self._ops:
                    return
                batch = self._take()
            self._apply(batch)

    def _take(self) -> list[_Op]:
        """The next op, or every consecutive update merged into one."""
        first = self._ops.popleft()
        if first.kind != "update":
            return [first]
        batch = [first]
        while self._ops and self._ops[0].kind == "update":
            batch.append(self._ops.popleft())
        return batch

    def _apply(self, batch: list[_Op]) -> None:
        if batch[0].kind == "flush":
            batch[0].future.set_result(None)
            return
        names = _names(batch)
        try:
            if self.before_write is not None:
                self.before_write()
            try:
                self._write(batch)
            except CorruptRegistryError as e:  # garbage in the file: ours is the truth
                self._rewrite(f"{e}")
                self._write(batch)
        except Exception as e:  # reported, and the writer goes on
            self._on_error(f"registry write failed: {e}")
            self.failures.update(dict.fromkeys(names, str(e)))
            for op in batch:
                op.future.set_exception(e)
            return
        if batch[0].kind == "rewrite":
            self.failures.clear()
        for name in names:
            self.failures.pop(name, None)
        revision = None
        if batch[0].kind in _SNAPSHOT_KINDS and self.last is not None:
            revision = self.revision = self.last.revision
        for op in batch:
            op.future.set_result(revision)

    def _write(self, batch: list[_Op]) -> None:
        kind, arg = batch[0].kind, batch[0].arg
        if kind == "update":
            merged: Changes = {}
            for op in batch:
                for name, fields in op.arg.items():
                    merged.setdefault(name, {}).update(fields)
            self.last = self.registry.modify(lambda snap: _known(snap, merged))
            lost = set(merged) - set(self.last.records)
            if lost & {r.name for r in self._truth()}:  # the file was deleted or emptied
                self._rewrite("the registry lost records of running instances")
        elif kind == "register":
            self.registry.register(arg)
        elif kind == "deregister":
            self.registry.deregister(arg)
        elif kind == "reset":
            self.last = self.registry.reset(arg)
        elif kind == "rewrite":
            self._rewrite(arg)

    def _rewrite(self, why: str) -> None:
        """Write every record from the supervisor's memory (weights and enabled flags as
        last seen); a corrupt file is kept aside first, as ``up`` does."""
        recover = getattr(self.registry, "recover", None)
        kept = recover() if recover is not None else None
        known = self.last.records if self.last is not None else {}
        records = [r.with_(weight=known[r.name].weight, enabled=known[r.name].enabled)
                   if r.name in known else r for r in self._truth()]
        self.last = self.registry.reset(records)
        aside = f"; kept the old file as {kept.name}" if kept is not None else ""
        self._on_error(f"{why}; rewrote the registry from the supervisor's state{aside}")


def _names(batch: list[_Op]) -> set[str]:
    kind, arg = batch[0].kind, batch[0].arg
    if kind == "update":
        return {n for op in batch for n in op.arg}
    if kind == "register":
        return {arg.name}
    if kind == "reset":
        return {r.name for r in arg}
    return set()  # a rewrite clears nothing: it does not know which writes it replaces


def _known(snap: Snapshot, changes: Changes) -> Changes:
    # An instance removed by scale or reload may have a last state change queued.
    return {n: f for n, f in changes.items() if n in snap.records}


async def landed(written: Written, timeout: float) -> bool:
    """Wait up to ``timeout`` for a write :class:`Recorder` queued (its future); False if
    it failed or hangs. Stopping and draining wait on it, never for long."""
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(written)), timeout)
    except Exception:  # the writer reported it; stopping goes on
        return False
    return True


async def landed_at(written: Written, timeout: float) -> int | None:
    """:func:`landed`, giving the registry's revision after the write: what a drain asks
    watchers to have applied. None when unknown (a register) or it failed or hangs."""
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(written)), timeout)
    except Exception:  # the writer reported it; stopping goes on
        return None
