"""The registry view of a balanced channel, sans-IO: instances, candidates, ejections.

:class:`Balancer` turns registry snapshots into one :class:`Instance` per running
process (with its sub-channel), keeps the tuple of candidates the picker sees, and
books the outcome of every attempt: an instance that was unreachable, or timed out
``eject_after`` times in a row, is ejected until a probe or the registry says it is
back. It never touches a socket, thread or event loop: the driver (the sync or the
asyncio channel) hands it a lock and :class:`Effects`, the three things only a
driver can do (open and close a sub-channel, start a probe) and the one it wants to
hear (the candidates changed).

>>> b = Balancer("server", SmoothWRR(), effects)       # doctest: +SKIP
>>> b.apply(registry.snapshot())                       # doctest: +SKIP
>>> b.pick()                                           # doctest: +SKIP
<Instance server1 127.0.0.1:50051 pid=4242 serving>
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from devcluster.client.calls import NoUsableInstanceError
from devcluster.client.picker import OrderKey, Picker
from devcluster.registry.record import Record, Snapshot, State

#: Identity of one running process of an instance: a restart changes pid and
#: started_at, so it gets a fresh sub-channel (no reconnect backoff inherited).
InstanceKey = tuple[str, str, int | None, float | None]

#: Failures that, without a response header, mean the server's application never saw
#: the call, so any call may go to another instance. (A grpc server in graceful
#: shutdown refuses new calls with CANCELLED before its application sees them.)
NOT_REACHED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class Instance:
    """One process of one registry record, with its sub-channel and health verdict."""

    __slots__ = ("address", "callables", "channel", "ejected", "key", "name", "record",
                 "retired", "timeouts")

    def __init__(self, record: Record, channel: Any) -> None:
        self.name = record.name
        self.address = record.address
        self.key: InstanceKey = instance_key(record)
        self.record = record
        self.channel = channel
        #: Sub-channel multicallables by the balanced multicallable's slot number.
        self.callables: dict[int, Any] = {}
        #: Why calls avoid this instance (set by a failure, cleared by a probe or
        #: by the registry showing a change), or None.
        self.ejected: str | None = None
        #: Attempts in a row that got no answer in time: how a hung (SIGSTOPped)
        #: server shows.
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
class Effects:
    """What only a driver can do for the balancer (it calls these, never blocks on them)."""

    #: A (lazy, non-blocking) sub-channel to an address.
    open_channel: Callable[[str], Any]
    #: Close a sub-channel of a process the registry no longer lists (maybe later).
    close_channel: Callable[[Any], None]
    #: Start probing an ejected instance (see :class:`~devcluster.client.attempts.Probe`).
    start_probe: Callable[[Instance], None]
    #: Called with the lock held after every change of the candidates.
    changed: Callable[[], None] = lambda: None


class Balancer:
    """The live view of one service's instances and the rules for using them.

    ``lock`` is the driver's (a ``threading.Lock``, which both channels give); the view
    takes it around every change and every pick (but a replayed rotation's, one C
    call), and nowhere else.
    """

    def __init__(
        self,
        service: str | None,
        picker: Picker,
        effects: Effects,
        *,
        eject_after: int = 2,
        retry_on: Collection[grpc.StatusCode] = (),
        order: OrderKey | None = None,
        lock: threading.Lock | None = None,
        where: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        #: Only instances whose registry metadata has every one of these pairs take calls.
        self.where: Mapping[str, str] = dict(where or {})
        #: Sorts instance names for failover and for the candidates (None: by name);
        #: the picker gets the same key.
        self._order = order
        self.lock = lock if lock is not None else threading.Lock()
        #: Numbers the calls, for CallInfo.seq.
        self.seq = itertools.count(1)
        self.revision: int | None = None
        self._picker = picker
        self._effects = effects
        self._eject_after = max(1, eject_after)
        self._retry_on = frozenset(retry_on)
        self._instances: dict[str, Instance] = {}
        self._candidates: tuple[tuple[str, int], ...] = ()
        self._snapshot: Snapshot | None = None
        self._closed = False
        # The picker's rotation as instances, replayed here while the candidates stay
        # the same (see pick); None while the picker has none or they changed.
        self._ring_pick: Callable[[], Instance] | None = None
        self._ring_at: Iterator[int] = iter(())
        self.pick = self._pick
        # Only a picker that can have a rotation is asked for one (after each pick).
        self._rotates = type(picker).rotation is not Picker.rotation
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
                if (self.service is not None and record.service != self.service) \
                        or not record.address:  # starting on a port nobody knows yet
                    continue
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
                    inst = Instance(record, self._effects.open_channel(record.address))
                new[record.name] = inst
            retired.extend(inst for name, inst in old.items() if name not in new)
            for inst in retired:
                inst.retired = True
            self._instances = new
            self._rebuild()
        for inst in retired:
            self._effects.close_channel(inst.channel)

    def _rebuild(self) -> None:
        self._stop_ring()
        usable = [self._instances[name] for name in self._sorted(self._instances)
                  if self._instances[name].record.usable and self.matches(self._instances[name])]
        healthy = [inst for inst in usable if inst.ejected is None]
        # When the registry takes away every instance we trust, an ejected one is
        # still better than none: calls go to it rather than wait for its probe.
        # A fresh tuple object tells the picker the candidates changed.
        self._candidates = tuple((inst.name, inst.record.weight) for inst in healthy or usable)
        self.generation += 1
        self._effects.changed()

    def matches(self, inst: Instance) -> bool:
        """True when ``inst``'s metadata has every ``where`` pair (metadata can change
        at runtime: each registry change re-selects)."""
        metadata = inst.record.metadata
        return all(metadata.get(k) == v for k, v in self.where.items())

    # -- picking ------------------------------------------------------------

    #: ``pick()``: the instance for the next call by the policy, or None if none is
    #: usable. While the candidates stay the same, a picker with a
    #: :meth:`~Picker.rotation` (weighted, once its rotation repeats) is replayed here,
    #: as instances: the same picks, with no Python frame at all (one C iterator's
    #: ``__next__``, atomic as one C call; bench scenario 20 counts the instructions
    #: per call). Otherwise (and after any change) :meth:`_pick`, under the lock.
    pick: Callable[[], Instance | None]

    def _pick(self) -> Instance | None:
        """``pick`` when no rotation is replayed: the picker's, under the lock."""
        lock = self.lock
        lock.acquire()  # not ``with``: no bound __enter__/__exit__ made per call
        try:
            if self._ring_pick is not None:  # adopted while this caller waited
                return self._ring_pick()
            candidates = self._candidates
            if not candidates:
                return None
            inst = self._instances[self._picker.pick(candidates)]
            if self._rotates:
                self._adopt_rotation()
            return inst
        finally:
            lock.release()

    def _adopt_rotation(self) -> None:
        """Replay the picker's rotation from here on, if it has one now (lock held)."""
        rotation = self._picker.rotation()
        if rotation is not None:
            names, pos = rotation
            ring = [self._instances[name] for name in names]
            # The ring's positions from ``pos`` on, round and round; reading the next
            # one is how _stop_ring learns where the replay stands.
            self._ring_at = at = itertools.cycle([*range(pos, len(ring)), *range(pos)])
            self.pick = self._ring_pick = map(ring.__getitem__, at).__next__

    def _stop_ring(self) -> None:
        """Hand the picker back where the replay stands (the candidates change; lock
        held)."""
        if self._ring_pick is not None:
            self.pick, self._ring_pick = self._pick, None
            self._picker.replayed(next(self._ring_at))

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
        """An attempt on ``inst`` got an answer: its timeout streak ends."""
        inst.timeouts = 0

    def failed(self, inst: Instance, code: grpc.StatusCode, reached: bool) -> bool:
        """Book a failed attempt on ``inst``; True if the call may go to another instance.

        ``reached`` is True when the server sent initial metadata, i.e. its
        application saw the call: such calls are retried only for ``retry_on``
        codes, as gRPC's own transparent retry does.
        """
        if code in NOT_REACHED_CODES and not reached:
            inst.timeouts = 0
            self.eject(inst, "unreachable")
            return True
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self._timed_out(inst, "timed out")
        else:
            inst.timeouts = 0
        return code in self._retry_on

    def stalled(self, inst: Instance) -> None:
        """An attempt on ``inst`` went unanswered for the hedge delay: a timeout too."""
        self._timed_out(inst, "unanswered")

    def _timed_out(self, inst: Instance, how: str) -> None:
        inst.timeouts += 1
        if inst.timeouts >= self._eject_after:
            self.eject(inst, f"hung ({inst.timeouts} calls in a row {how})")

    def eject(self, inst: Instance, reason: str) -> bool:
        """Stop sending calls to ``inst`` until it proves alive; never the last one."""
        with self.lock:
            if inst.ejected is not None or inst.retired or self._closed:
                return False
            if len(self._candidates) <= 1 and any(n == inst.name for n, _ in self._candidates):
                return False
            inst.ejected = reason
            self._rebuild()
        self._effects.start_probe(inst)
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
        parts = [f"{inst.name} {_reason(inst, failures.get(inst.name))}" if self.matches(inst)
                 else f"{inst.name} has metadata {_pairs(inst.record.metadata) or '{}'}"
                 for inst in self.instances()]
        what = "any service" if self.service is None else f"service {self.service!r}"
        if self.where:
            what += f" where {_pairs(self.where)}"
        if not parts:
            return f"no usable instance of {what}: the registry lists none"
        return f"no usable instance of {what}: {', '.join(parts)}"

    def out_of_time(self, tried: Collection[tuple[Instance, grpc.StatusCode]] = (),
                    ) -> NoUsableInstanceError:
        """The error for a call whose deadline ran out while no instance would take it."""
        failures = {i.name: f"failed this call ({code.name})" for i, code in tried}
        return NoUsableInstanceError(self.why_unusable(failures))

    def close(self) -> list[Instance]:
        """Forget every instance; return them so the driver can close their channels."""
        with self.lock:
            self._closed = True
            gone = list(self._instances.values())
            for inst in gone:
                inst.retired = True
            self._instances = {}
            self._stop_ring()
            self._candidates = ()
            self.generation += 1
            self._effects.changed()
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


def _pairs(metadata: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(metadata.items()))
