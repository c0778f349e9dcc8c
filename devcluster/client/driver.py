"""What both balanced channels share as drivers: options, the registry, its watch, probes.

:class:`ChannelDriver` holds the keyword arguments of a balanced channel (defined
here once, so the sync and the asyncio channel take the same ones with the same
meaning), opens the registry, builds the sans-IO :class:`Balancer`, and follows
the registry in a thread. A subclass adds the I/O of its flavour: how to make,
close and probe a sub-channel, how to hand a snapshot to the balancer, how to
wake calls waiting for an instance.
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final

import grpc
from grpc_health.v1 import health_pb2

from devcluster.client.attempts import DEFAULT_WAIT, Attempts, CallOptions, Probe
from devcluster.client.balancer import Balancer, Effects, Instance
from devcluster.client.calls import CallInfo
from devcluster.client.picker import DEFAULT_POLICY, OrderKey, make_picker
from devcluster.client.stats import StatsPublisher, stats_on_call
from devcluster.errors import UsageError
from devcluster.registry.base import Registry
from devcluster.registry.inotify import WatchStop
from devcluster.registry.record import Snapshot

log = logging.getLogger("devcluster.client")

#: Options of every sub-channel. The local subchannel pool matters: without it a
#: re-created channel shares grpc's global subchannel, still in reconnect backoff
#: from the process that died. Short backoffs let a probe see a restart quickly.
SUBCHANNEL_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

#: Sub-channels of replaced or removed instances stay open this long, so calls
#: still in flight on them (a draining instance) can finish.
RETIRE_GRACE: Final = 5.0

HEALTH_CHECK_METHOD: Final = "/grpc.health.v1.Health/Check"


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


def follow_registry(registry: Registry, stop: threading.Event,
                    deliver: Callable[[Snapshot], None]) -> None:
    """Hand every snapshot of ``registry`` to ``deliver`` until ``stop`` is set."""
    while not stop.is_set():
        try:
            for snapshot in registry.watch(stop):
                deliver(snapshot)
            return
        except Exception:
            # A registry caught mid-repair (corrupt file, deleted dir) must not end
            # live following for good; the last good view keeps serving meanwhile.
            log.warning("registry watch failed; retrying in 0.5 s", exc_info=True)
            stop.wait(0.5)


def health_check(channel: Any) -> Any:
    """The grpc.health.v1 Check multicallable of a (sync or aio) sub-channel."""
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)


#: The request of every probe.
HEALTH_REQUEST: Final = health_pb2.HealthCheckRequest()


def health_serving(reply: Any) -> bool:
    """True when a Check reply says SERVING."""
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _multicallable(kind: str, doc: str) -> Callable[..., Any]:
    """grpc's ``kind`` factory method (``unary_unary``...): the flavour's class for it."""

    def make(self: ChannelDriver, method: str, request_serializer: Any = None,
             response_deserializer: Any = None, _registered_method: bool | None = False) -> Any:
        return self.CALLS[kind](self, kind, method, request_serializer, response_deserializer,
                                bool(_registered_method))

    make.__name__ = make.__qualname__ = kind
    make.__doc__ = doc
    return make


def _publisher(stats: bool | None, state_dir: str | os.PathLike[str] | None,
               service: str | None) -> StatsPublisher | None:
    """The channel's statistics publisher, or None when off or with nowhere to publish."""
    if stats is False or state_dir is None:
        return None
    publisher = StatsPublisher(state_dir, enabled=stats, label=f"channel {service or 'all'}")
    return publisher if publisher.enabled else None


class ChannelDriver(abc.ABC):
    """The part of BalancedChannel and AioBalancedChannel that is the same.

    ``service=None`` takes every instance; ``registry`` is a Registry or a state
    dir (None: ``$DEVCLUSTER_HOME`` or ``./.devcluster``). ``policy`` is a name
    of :data:`~devcluster.client.picker.POLICIES`. Calls that the server saw are
    not retried unless their code is in ``retry_on``. An instance is ejected
    after one ``UNAVAILABLE`` before the server saw the call, or after
    ``eject_after`` attempts in a row without an answer in time, until a health
    probe or the registry says it is back. ``on_call`` gets a :class:`CallInfo`
    per call (every call shape). ``options`` go to every sub-channel. A call with
    no deadline waits ``default_wait`` s at most for a usable instance. ``order``
    sorts instance names for the policy and for failover (default: by name; a
    static target passes the position of each address in its list).
    ``hedge_after`` (idempotent methods only): a unary call unanswered for that
    many seconds also goes to a second instance and the first answer wins, so a
    hung instance costs no failed call even with many calls in flight.
    ``stats`` publishes what this channel sees of each instance (calls, failures,
    p50, ejections) to ``<state_dir>/clients/`` for ``top`` and the console; None
    follows ``$DEVCLUSTER_CLIENT_STATS`` (on unless ``0``). ``state_dir`` says where
    (default: the file registry's own dir; an etcd registry publishes nothing
    without it).
    ``where`` (``{"zone": "a"}``): only instances whose registry metadata has every
    one of these pairs take calls; a change of metadata at runtime re-selects.
    """

    def __init__(
        self,
        service: str | None = None,
        registry: Registry | str | os.PathLike[str] | None = None,
        *,
        policy: str = DEFAULT_POLICY,
        retry_on: Collection[grpc.StatusCode] = (),
        eject_after: int = 2,
        on_call: Callable[[CallInfo], None] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        default_wait: float = DEFAULT_WAIT,
        order: OrderKey | None = None,
        hedge_after: float | None = None,
        stats: bool | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        where: Mapping[str, str] | None = None,
    ) -> None:
        if hedge_after is not None and hedge_after <= 0:
            raise UsageError(f"hedge_after must be > 0 seconds (or None: off), got {hedge_after}")
        picker = make_picker(policy, order)
        self._lock = threading.Lock()
        self._prepare()
        self.default_wait = default_wait
        self._options = [*SUBCHANNEL_OPTIONS, *options]
        self._registry, self._owns_registry = open_registry(registry)
        self._stats = _publisher(stats, state_dir or getattr(self._registry, "state_dir", None),
                                 service)
        self._on_call = stats_on_call(self._stats, on_call)
        #: When statistics are the only ``on_call``: how a call answered at the first
        #: attempt is counted, ``count_ok((instance name, latency in ms))``, with no
        #: CallInfo built and no response header read. None otherwise (also once
        #: ``on_call`` is set).
        self.count_ok: Callable[[tuple[str, float]], None] | None = (
            self._stats.count_ok if self._stats is not None and on_call is None else None)
        # Wakes the registry watch at once on close (a plain Event: within 50 ms).
        self._stop = WatchStop()
        self._slot_numbers = itertools.count(1)
        self.balancer = Balancer(
            service, picker,
            Effects(self._open_channel, self._retire_channel, self._start_probe, self._changed),
            eject_after=eject_after, retry_on=retry_on, order=order, lock=self._lock,
            where=where)
        self.hedge_after = hedge_after  # (also makes call_options)
        # The first view is synchronous: a call right after construction has targets.
        self._apply(self._registry.snapshot())
        self._watcher = threading.Thread(
            target=follow_registry, args=(self._registry, self._stop, self._deliver),
            name=f"devcluster-watch-{service or 'all'}", daemon=True)
        self._watcher.start()

    #: The multicallable class of each grpc call shape, per flavour.
    CALLS: ClassVar[Mapping[str, type[Any]]]

    unary_unary = _multicallable(
        "unary_unary", "A balanced unary-unary multicallable: failover, ejection, hedging.")
    unary_stream = _multicallable(
        "unary_stream", "A unary-stream multicallable: one instance per call, no failover.")
    stream_unary = _multicallable(
        "stream_unary", "A stream-unary multicallable: one instance per call, no failover.")
    stream_stream = _multicallable(
        "stream_stream", "A stream-stream multicallable: one instance per call, no failover.")

    def __repr__(self) -> str:
        names = ", ".join(repr(i) for i in self.balancer.instances())
        return f"<{type(self).__name__} service={self.balancer.service!r} [{names}]>"

    def instances(self) -> Iterator[Instance]:
        """The instances of the current view, by name (for ``ps``-like displays)."""
        return iter(self.balancer.instances())

    def next_slot(self) -> int:
        """A number for a new multicallable, keying its sub-channel twins."""
        return next(self._slot_numbers)

    def attempts(self, timeout: float | None, replayable: bool = True) -> Attempts:
        """The decisions of one new call with ``timeout`` (streams: not replayable)."""
        return Attempts(self.balancer, timeout, self._hedge_after, replayable, self.default_wait)

    @property
    def hedge_after(self) -> float | None:
        """Seconds after which an unanswered unary call also goes to another instance."""
        return self._hedge_after

    @hedge_after.setter
    def hedge_after(self, seconds: float | None) -> None:
        # Changeable at runtime (the demo turns hedging on and off).
        self._hedge_after = seconds
        #: What the multicallables pass to :func:`~devcluster.client.attempts.begin` for
        #: each new unary call (a plain attribute: read on the per-call path).
        self.call_options = CallOptions(seconds, self.default_wait)

    @property
    def on_call(self) -> Callable[[CallInfo], None] | None:
        """What each finished call is reported to (a :class:`CallInfo`), or None."""
        return self._on_call

    @on_call.setter
    def on_call(self, report: Callable[[CallInfo], None] | None) -> None:
        # Set after construction (the demo does): every call builds its CallInfo again.
        self._on_call, self.count_ok = report, None

    def _close_stats(self) -> None:
        if self._stats is not None:
            self._stats.close()

    def _apply(self, snapshot: Snapshot) -> None:
        """Adopt ``snapshot``, then publish the revision the view now follows: a stopping
        instance waits until its watchers applied its ``draining`` (supervisor.drain)."""
        self.balancer.apply(snapshot)
        if self._stats is not None:
            self._stats.applied(self.balancer.revision)

    def probe(self, inst: Instance) -> Probe:
        """The probing decisions for an ejected ``inst``."""
        return Probe(self.balancer, inst)

    # -- the I/O of one flavour ---------------------------------------------------------

    @abc.abstractmethod
    def _prepare(self) -> None:
        """Set up the flavour's own state (runs first in ``__init__``; ``_lock`` exists)."""

    @abc.abstractmethod
    def _open_channel(self, address: str) -> Any:
        """A sub-channel to ``address``."""

    @abc.abstractmethod
    def _retire_channel(self, channel: Any) -> None:
        """Close ``channel`` once calls in flight on it had time to end."""

    @abc.abstractmethod
    def _start_probe(self, inst: Instance) -> None:
        """Start health-checking the ejected ``inst`` (see :meth:`probe`)."""

    @abc.abstractmethod
    def _changed(self) -> None:
        """Wake calls waiting for an instance (the balancer lock is held)."""

    @abc.abstractmethod
    def _deliver(self, snapshot: Snapshot) -> None:
        """Hand ``snapshot`` (from the watch thread) to the balancer."""
