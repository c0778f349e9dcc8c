"""The fixture's cluster: a :class:`Cluster` that keeps the timeline of what happened to it.

:class:`PluginCluster` adds, on top of :class:`devcluster.api.Cluster`:

* ``events(since=None)``: the timeline (see :mod:`devcluster.events`): the
  supervisor's ``events.jsonl`` (starts, exits with code or signal, restarts,
  state, weight, enable, metadata changes, and the verbs the test asked for, by
  the test's name), plus what only this process saw: the registry writes the test
  asked for (``weight``...) and the ejections and failovers seen by its channels.
* ``channel(service, *, aio=False, **options)``: a balancing channel with the
  client's options, whose calls are counted per instance (``calls()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

from devcluster.api import Cluster, NotReadyError
from devcluster.events import Event, EventKind
from devcluster.registry import DOWN_STATES

if TYPE_CHECKING:
    from devcluster.client.aio import AioBalancedChannel
    from devcluster.client.channel import BalancedChannel
    from devcluster.client.options import ChannelOptions

log = logging.getLogger(__name__)

#: gRPC codes with which a balancer ejects an instance the call never reached.
_UNREACHED = frozenset({"UNAVAILABLE", "CANCELLED"})
_DOWN = frozenset(s.value for s in DOWN_STATES)
#: Sources a supervisor's events.jsonl makes redundant once it exists.
_DERIVED = frozenset({"registry"})


class Timeline:
    """Events seen by this process, safe to add to from any thread."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def add(self, *events: Event) -> None:
        with self._lock:
            self._events.extend(events)

    def events(self, since: float | None = None) -> list[Event]:
        with self._lock:
            found = [e for e in self._events if since is None or e.time >= since]
        return sorted(found, key=lambda e: e.time)


class CallRecorder:
    """An ``on_call`` callback: counts calls per instance, infers ejections and failovers.

    The channel's own decisions are private; what a call reports is public: the
    instances it failed on (``retried``) and its outcome. An instance a call could not
    reach (UNAVAILABLE/CANCELLED, then tried elsewhere) or that timed out
    ``eject_after`` times in a row is taken as ejected until it answers a call again.
    """

    def __init__(self, timeline: Timeline, eject_after: int = 2,
                 then: Callable[[Any], None] | None = None) -> None:
        self.timeline = timeline
        self.eject_after = max(1, eject_after)
        self.then = then
        self.counts: Counter[tuple[str, bool]] = Counter()
        self._streak: Counter[str] = Counter()
        self._ejected: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, info: Any) -> None:
        now = time.time()
        with self._lock:
            self.counts[(info.instance, bool(info.ok))] += 1
            self._failovers(info, now)
            self._timeouts(info, now)
        if self.then is not None:
            self.then(info)

    def _failovers(self, info: Any, now: float) -> None:
        if not info.retried:
            return
        tried = [name for name, _ in info.retried]
        for (name, code), went_to in zip(info.retried, [*tried[1:], info.instance], strict=True):
            self.timeline.add(Event(now, EventKind.FAILOVER, name, code=code, new=went_to,
                                    source="channel", detail=f"call {info.seq}"))
            if code in _UNREACHED:
                self._eject(name, "unreachable", now)

    def _timeouts(self, info: Any, now: float) -> None:
        name = info.instance
        if info.ok:
            self._streak[name] = 0
            if name in self._ejected:
                self._ejected.discard(name)
                self.timeline.add(Event(now, EventKind.READMITTED, name, source="channel"))
        elif info.code == "DEADLINE_EXCEEDED":
            self._streak[name] += 1
            if self._streak[name] >= self.eject_after:
                self._eject(name, f"hung ({self._streak[name]} calls in a row timed out)", now)

    def _eject(self, name: str, why: str, now: float) -> None:
        if name not in self._ejected:
            self._ejected.add(name)
            self.timeline.add(Event(now, EventKind.EJECTED, name, source="channel", detail=why))


class PluginCluster(Cluster):
    """A Cluster that records its timeline; what the ``cluster`` fixture gives a test.

    ``who()`` names the asker of the verbs called on it (the running test): the
    supervisor's timeline says so for the control verbs (``kill``, ``scale``...), and
    this object records the registry writes (``weight``, ``enable``, ``disable``).
    """

    def __init__(self, procfile: Any = "Procfile", *, who: Callable[[], str] | None = None,
                 **options: Any) -> None:
        super().__init__(procfile, **options)
        self.timeline = Timeline()
        self.shared = False
        self._who = who or (lambda: "test")
        self._recorders: list[CallRecorder] = []
        self._channels: list[tuple[Any, asyncio.AbstractEventLoop | None]] = []

    def asker(self) -> str | None:
        return self._who()

    # -- life cycle --------------------------------------------------------------------

    def up(self) -> dict[str, dict[str, Any]]:
        try:
            return super().up()
        except NotReadyError:
            raise  # it runs: its story is worth telling
        except BaseException:
            self.detach()
            raise

    def down(self, grace: float | None = None) -> None:
        self.detach()
        super().down(grace)

    def detach(self) -> None:
        """Close this object's channels; the cluster keeps running."""
        channels, self._channels = self._channels, []
        for channel, loop in channels:
            _close_channel(channel, loop)

    # -- the timeline ------------------------------------------------------------------

    def events(self, since: float | None = None) -> list[Event]:
        """The cluster's timeline (at or after ``since``, seconds since the epoch): the
        supervisor's, with what only this process saw (channels, registry writes).

        >>> [e.describe() for e in cluster.events() if e.kind == "exited"]  # doctest: +SKIP
        ['server2 exited (signal SIGKILL) (asked by test_x.py::test_kill)']
        """
        return sorted([*super().events(since), *self.timeline.events(since)],
                      key=lambda e: e.time)

    def calls(self) -> dict[str, dict[str, int]]:
        """Calls made through this cluster's channels, per instance: ``{"ok": n, "failed": n}``."""
        out: dict[str, dict[str, int]] = {}
        for rec in self._recorders:
            for (name, ok), n in list(rec.counts.items()):
                row = out.setdefault(name, {"ok": 0, "failed": 0})
                row["ok" if ok else "failed"] += n
        return dict(sorted(out.items()))

    @overload
    def channel(self, service: str | None = None, *, aio: Literal[False] = False,
                **options: Unpack[ChannelOptions]) -> BalancedChannel: ...

    @overload
    def channel(self, service: str | None = None, *, aio: Literal[True],
                **options: Unpack[ChannelOptions]) -> AioBalancedChannel: ...

    def channel(self, service: str | None = None, *, aio: bool = False,
                **options: Unpack[ChannelOptions]) -> BalancedChannel | AioBalancedChannel:
        """:meth:`Cluster.channel`, whose calls, ejections and failovers go into this
        cluster's timeline; it is closed when the fixture ends. Make an ``aio`` channel
        inside the running event loop of the test.
        """
        kind = _channel_class(aio)
        eject_after = options.get(
            "eject_after", inspect.signature(kind).parameters["eject_after"].default)
        recorder = CallRecorder(self.timeline, eject_after, options.pop("on_call", None))
        options["on_call"] = recorder
        channel = (super().channel(service, aio=True, **options) if aio
                   else super().channel(service, **options))
        self._recorders.append(recorder)
        self._channels.append((channel, asyncio.get_running_loop() if aio else None))
        return channel

    # -- registry writes, recorded with who asked -----------------------------------------

    def _asked(self, name: str, what: str) -> None:
        self.timeline.add(Event(time.time(), EventKind.ASKED, name, who=self._who(),
                                source="test", detail=what))

    def weight(self, name: str, weight: int) -> None:
        self._asked(name, f"weight {weight}")
        super().weight(name, weight)

    def enable(self, name: str) -> None:
        self._asked(name, "enable")
        super().enable(name)

    def disable(self, name: str) -> None:
        self._asked(name, "disable")
        super().disable(name)


def _channel_class(aio: bool) -> Any:
    if aio:
        from devcluster.client.aio import AioBalancedChannel

        return AioBalancedChannel
    from devcluster.client import BalancedChannel

    return BalancedChannel


def _close_channel(channel: Any, loop: asyncio.AbstractEventLoop | None) -> None:
    """Close a channel the test may have left open (an aio one only if its loop can run)."""
    with contextlib.suppress(Exception):
        if loop is None:
            channel.close()
        elif not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(channel.close())
