"""The state both balanced channels share: the registry view, the picker, ejections.

:class:`Balancer` turns registry snapshots into one :class:`Instance` per registry
record (with its own sub-channel), keeps the tuple of candidates the picker sees,
and decides, per failed call, whether to eject the instance and whether to retry.
It makes no calls itself: the sync and the asyncio channel drive it, and tell it
how to make and close sub-channels and how to probe an ejected instance.

Everything here runs under one lock; the hot path (:meth:`Balancer.pick`) takes
it once and touches no more than the picker and a dict.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from devcluster.client.calls import NoUsableInstanceError
from devcluster.client.picker import OrderKey, Picker
from devcluster.registry.base import Registry
from devcluster.registry.record import Record, Snapshot, State

#: Identity of one running process of an instance: a restart changes pid and
#: started_at, so it gets a fresh sub-channel (no reconnect backoff inherited).
InstanceKey = tuple[str, str, int | None, float | None]


#: Failures that, without a response header, mean the server's application never saw
#: the call, so any call may go to another instance.
_NOT_REACHED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

class Instance:
    """One process of one registry record, with its sub-channel and health verdict."""

    __slots__ = ("address", "callables", "channel", "ejected", "key", "name", "record",
                 "retired", "timeouts")

    def __init__(self, record: Record, channel: Any) -> None:
        self.name = record.name
        self.address = record.address
        self.key: InstanceKey = (record.name, record.address, record.pid, record.started_at)
        self.record = record
        self.channel = channel
        #: Sub-channel multicallables by the balanced multicallable's slot number.
        self.callables: dict[int, Any] = {}
        #: Why calls avoid this instance (set by a failure, cleared by a probe or
        #: by the registry showing a change), or None.
        self.ejected: str | None = None
        #: DEADLINE_EXCEEDED calls in a row: how a hung (SIGSTOPped) server shows.
        self.timeouts = 0
        #: Set once the registry no longer lists this process: probes stop.
        self.retired = False

    def __repr__(self) -> str:
        state = f"ejected: {self.ejected}" if self.ejected else self.record.state.value
        return f"<Instance {self.name} {self.address} pid={self.record.pid} {state}>"


def instance_key(record: Record) -> InstanceKey:
    """The key that gives a restarted process a fresh sub-channel."""
    return (record.name, record.address, record.pid, record.started_at)


@dataclass
class Hooks:
    """How a channel flavour (sync or asyncio) makes, closes and probes sub-channels."""

    make_channel: Callable[[str], Any]
    close_channel: Callable[[Any], None]
    start_probe: Callable[[Instance], None]
    #: Called with the lock held after every change of the candidates.
    on_change: Callable[[], None] = lambda: None


class Balancer:
    """The live view of one service's instances and the rules for using them.

    >>> b = Balancer("server", SmoothWRR(), hooks)     # doctest: +SKIP
    >>> b.apply(registry.snapshot())                   # doctest: +SKIP
    >>> b.pick()                                       # doctest: +SKIP
    <Instance server1 127.0.0.1:50051 pid=4242 serving>
    """

    def __init__(
        self,
        service: str | None,
        picker: Picker,
        hooks: Hooks,
        *,
        eject_after: int = 2,
        retry_on: Collection[grpc.StatusCode] = (),
        order: OrderKey | None = None,
    ) -> None:
        self.service = service
        #: Sorts instance names for failover and for the candidates (None: by name);
        #: give the picker the same key.
        self._order = order
        self.lock = threading.Lock()
        self.seq = itertools.count(1)
        self.revision: int | None = None
        self._picker = picker
        self._hooks = hooks
        self._eject_after = max(1, eject_after)
        self._retry_on = frozenset(retry_on)
        self._instances: dict[str, Instance] = {}
        self._candidates: tuple[tuple[str, int], ...] = ()
        self._snapshot: Snapshot | None = None
        self._closed = False
        #: Grows on every change of the candidates, so a waiter can tell it missed none.
        self.generation = 0

    # -- registry ---------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Adopt ``snapshot``: new processes get sub-channels, gone ones lose theirs."""
        retired: list[Instance] = []
        with self.lock:
            last = self._snapshot
            if self._closed or snapshot is last or (
                    last is not None and snapshot.revision == last.revision
                    and snapshot.records == last.records):
                return
            # Same revision with other records happens: the file registry shows a
            # record whose process died as exited without any write.
            self._snapshot = snapshot
            self.revision = snapshot.revision
            old = self._instances
            new: dict[str, Instance] = {}
            for record in snapshot.records.values():
                if self.service is not None and record.service != self.service:
                    continue
                if not record.address:
                    continue  # still starting on a port nobody knows yet: nothing to dial
                inst = old.get(record.name)
                if inst is not None and inst.key == instance_key(record):
                    if inst.ejected and record.state is not inst.record.state:
                        # The registry saw the instance go down and come back (or the
                        # reverse): its own word beats our old verdict.
                        self._readmit(inst)
                    inst.record = record
                else:
                    if inst is not None:
                        retired.append(inst)
                    inst = Instance(record, self._hooks.make_channel(record.address))
                new[record.name] = inst
            retired.extend(inst for name, inst in old.items() if name not in new)
            for inst in retired:
                inst.retired = True
            self._instances = new
            self._rebuild()
        for inst in retired:
            self._hooks.close_channel(inst.channel)

    def _rebuild(self) -> None:
        usable = [self._instances[name] for name in self._sorted(self._instances)
                  if self._instances[name].record.usable]
        healthy = [inst for inst in usable if inst.ejected is None]
        # When the registry takes away every instance we trust, an ejected one is
        # still better than none: calls go to it rather than wait for its probe.
        # A fresh tuple object tells the picker the candidates changed.
        self._candidates = tuple((inst.name, inst.record.weight) for inst in healthy or usable)
        self.generation += 1
        self._hooks.on_change()

    # -- picking ------------------------------------------------------------

    def pick(self) -> Instance | None:
        """The instance for the next call by the policy, or None if none is usable."""
        with self.lock:
            if not self._candidates:
                return None
            return self._instances[self._picker.pick(self._candidates)]

    def next_after(self, name: str, tried: Collection[str]) -> Instance | None:
        """The first usable instance after ``name`` in name order not yet ``tried``.

        Failover does not consult the picker, so retries leave the weighted
        rotation of ordinary calls undisturbed.
        """
        with self.lock:
            names = [n for n, _ in self._candidates if n not in tried]
            if not names:
                return None
            key = self._order
            if key is None:
                later = [n for n in names if n > name]
            else:
                after = key(name) if name in self._instances else None
                later = [n for n in names if after is None or key(n) > after]
            return self._instances[later[0] if later else names[0]]

    def _sorted(self, names: Collection[str]) -> list[str]:
        return sorted(names, key=self._order)

    def has_candidates(self) -> bool:
        """True while at least one instance may receive calls."""
        return bool(self._candidates)

    # -- outcomes ---------------------------------------------------------

    def succeeded(self, inst: Instance) -> None:
        """A call on ``inst`` got an answer: its timeout streak ends."""
        inst.timeouts = 0

    def failed(self, inst: Instance, code: grpc.StatusCode, reached: bool) -> bool:
        """Book a failed call on ``inst``; True if the call should go to another instance.

        ``reached`` is True when the server sent initial metadata, i.e. its
        application saw the call: such calls are retried only for ``retry_on``
        codes, as gRPC's own transparent retry does.
        """
        # A grpc server in graceful shutdown refuses new calls with CANCELLED before its
        # application sees them (no header): as safe to repeat as a refused connection.
        if code in _NOT_REACHED_CODES and not reached:
            inst.timeouts = 0
            self.eject(inst, "unreachable")
            return True
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            inst.timeouts += 1
            if inst.timeouts >= self._eject_after:
                self.eject(inst, f"hung ({inst.timeouts} calls in a row timed out)")
        else:
            inst.timeouts = 0
        return code in self._retry_on

    def stalled(self, inst: Instance) -> None:
        """A call on ``inst`` went unanswered for the hedge delay: count it as a timeout."""
        inst.timeouts += 1
        if inst.timeouts >= self._eject_after:
            self.eject(inst, f"hung ({inst.timeouts} calls in a row unanswered)")

    def eject(self, inst: Instance, reason: str) -> bool:
        """Stop sending calls to ``inst`` until it proves alive; never the last one."""
        with self.lock:
            if inst.ejected is not None or inst.retired or self._closed:
                return False
            if len(self._candidates) <= 1 and any(n == inst.name for n, _ in self._candidates):
                return False
            inst.ejected = reason
            self._rebuild()
        self._hooks.start_probe(inst)
        return True

    def readmit(self, inst: Instance) -> None:
        """A probe got an answer from ``inst``: it takes calls again."""
        with self.lock:
            if inst.ejected is not None and not inst.retired:
                self._readmit(inst)

    def _readmit(self, inst: Instance) -> None:
        inst.ejected = None
        inst.timeouts = 0
        self._rebuild()

    # -- reporting --------------------------------------------------------

    def weights(self) -> dict[str, int]:
        """Registry weight of every instance that may receive calls, by name."""
        with self.lock:
            return {inst.name: inst.record.weight for inst in self._instances.values()
                    if inst.record.usable}

    def instances(self) -> list[Instance]:
        """Every instance the registry lists (of the service), by name (or ``order``)."""
        with self.lock:
            return [self._instances[name] for name in self._sorted(self._instances)]

    def why_unusable(self, failures: dict[str, str] | None = None) -> str:
        """One line naming every known instance and why it takes no calls now."""
        failures = failures or {}
        parts = []
        for inst in self.instances():
            parts.append(f"{inst.name} {_reason(inst, failures.get(inst.name))}")
        what = "any service" if self.service is None else f"service {self.service!r}"
        if not parts:
            return f"no usable instance of {what}: the registry lists none"
        return f"no usable instance of {what}: {', '.join(parts)}"

    def out_of_time(self, tried: list[tuple[Instance, grpc.StatusCode]] | None,
                    ) -> NoUsableInstanceError:
        """The error for a call whose deadline ran out while no instance would take it."""
        failures = {i.name: f"failed this call ({code.name})" for i, code in tried or ()}
        return NoUsableInstanceError(self.why_unusable(failures))

    def close(self) -> list[Instance]:
        """Forget every instance; return them so the channel can close their channels."""
        with self.lock:
            self._closed = True
            gone = list(self._instances.values())
            for inst in gone:
                inst.retired = True
            self._instances = {}
            self._candidates = ()
            self.generation += 1
            self._hooks.on_change()
        return gone


def _reason(inst: Instance, failure: str | None) -> str:
    record = inst.record
    if record.state is not State.SERVING:
        return record.state.value
    if not record.enabled:
        return "disabled"
    if record.weight <= 0:
        return "weight 0"
    if inst.ejected:
        return inst.ejected
    return failure or "serving but failed this call"


#: Options of every sub-channel. The local subchannel pool matters: without it a
#: re-created channel shares grpc's global subchannel, still in reconnect backoff
#: from the process that died. Short backoffs let a probe see a restart quickly.
SUBCHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

#: Probing an ejected instance: first after 0.2 s, then doubling up to 5 s; each
#: health Check gets a short deadline so a hung server costs the prober little.
PROBE_FIRST = 0.2
PROBE_MAX = 5.0
PROBE_TIMEOUT = 0.3

#: How long a call with no deadline waits for a usable instance before failing.
DEFAULT_WAIT = 10.0

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


def probe_verdict(code: grpc.StatusCode, serving: bool = False) -> bool:
    """True when a health Check that ended with ``code`` shows the server is back.

    Any answer from the server counts (UNIMPLEMENTED: it just has no health
    service), except an explicit NOT_SERVING (``serving`` False on OK).
    """
    if code is grpc.StatusCode.OK:
        return serving
    return code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED)


def open_registry(registry: Registry | str | os.PathLike[str] | None) -> tuple[Registry, bool]:
    """``(registry, owned)`` for the ``registry`` argument of a balanced channel.

    A Registry is used as is; a path is a state dir of a file registry (which the
    channel then owns and closes); None means ``$DEVCLUSTER_HOME``, else
    ``./.devcluster``, where ``devcluster up`` keeps it by default.
    """
    if isinstance(registry, Registry):
        return registry, False
    from devcluster.registry import open_registry as open_spec

    if registry is None:  # the same resolution as the CLI and the API
        from devcluster.defaults import state_dir

        registry = state_dir()
    return open_spec(registry), True
