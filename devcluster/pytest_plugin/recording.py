"""The fixture's cluster: a :class:`Cluster` that keeps the timeline of what happened to it.

:class:`PluginCluster` adds, on top of :class:`devcluster.api.Cluster`:

* ``events(since=None)``: the timeline (see :mod:`devcluster.events`). The
  supervisor's own ``events.jsonl`` when it writes one; until then, events read
  off the registry by a watch thread (starts, state, weight, enable, metadata
  changes; exits with the code or signal ``ps`` gives), plus what this object saw:
  the verbs the test asked for (``kill``, ``weight``...) and the ejections and
  failovers seen by the channels it made.
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from devcluster.api import Cluster, NotReadyError
from devcluster.events import Event, EventKind, diff_snapshots, read_events
from devcluster.registry import DOWN_STATES, Snapshot

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

    ``who()`` names the asker of the verbs called on it (the running test).
    """

    def __init__(self, procfile: Any = "Procfile", *, who: Callable[[], str] | None = None,
                 on_pid: Callable[[int, float | None, str], None] | None = None,
                 **options: Any) -> None:
        super().__init__(procfile, **options)
        self.timeline = Timeline()
        self.shared = False
        self._who = who or (lambda: "test")
        self._on_pid = on_pid
        self._recorders: list[CallRecorder] = []
        self._channels: list[tuple[Any, asyncio.AbstractEventLoop | None]] = []
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None
        self._seen: Snapshot | None = None
        self._seen_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------

    def up(self) -> dict[str, dict[str, Any]]:
        # Follow the registry from before its first write: starts are in the timeline.
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.follow()
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

    def follow(self) -> None:
        """Start recording the registry's changes (idempotent)."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._follow, daemon=True,
                                         name=f"devcluster-timeline-{self.state_dir.name}")
        self._watcher.start()

    def detach(self) -> None:
        """Stop recording and close this object's channels; the cluster keeps running."""
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        channels, self._channels = self._channels, []
        for channel, loop in channels:
            _close_channel(channel, loop)

    def _follow(self) -> None:
        try:
            for snap in self.registry.watch(self._stop_watch):
                self._catch_up(snap)
        except Exception:  # the timeline is a report aid: never fail a test for it
            log.debug("timeline watch of %s ended", self.state_dir, exc_info=True)

    def _catch_up(self, snap: Snapshot | None = None) -> None:
        """Record what changed since the last snapshot seen (by the watcher or a reader:
        ``events()`` right after a change must already show it)."""
        with self._seen_lock:
            if snap is None:
                snap = self.registry.snapshot()
            seen = self._seen
            if seen is not None and snap.revision <= seen.revision:
                return
            self._seen = snap
            self._note(diff_snapshots(seen, snap))

    def _note(self, events: list[Event]) -> None:
        exits: list[Event] = []
        for e in events:
            if e.kind is EventKind.STARTED and self._on_pid is not None and e.instance:
                self._on_pid(int(e.new), e.time, e.instance)
            if e.kind is EventKind.STATE and e.new in _DOWN and e.old not in _DOWN | {None}:
                exits.append(self._exit_event(e))
        self.timeline.add(*events, *exits)

    def _exit_event(self, state: Event) -> Event:
        """The exit behind a state change to a down state, with ``ps``'s code or signal."""
        how = ""
        with contextlib.suppress(Exception):  # the supervisor may be gone already
            how = next((d.get("last_exit") or "" for d in self.ps()
                        if d["name"] == state.instance), "")
        kind, _, value = how.partition(" ")
        return Event(state.time, EventKind.EXITED, state.instance, source="registry",
                     code=int(value) if kind == "exit" and value.lstrip("-").isdigit() else None,
                     signal=value if kind == "signal" else None)

    # -- the timeline ------------------------------------------------------------------

    def events(self, since: float | None = None) -> list[Event]:
        """The cluster's timeline (at or after ``since``, seconds since the epoch).

        >>> [e.describe() for e in cluster.events() if e.kind == "exited"]  # doctest: +SKIP
        ['server2 exited (signal SIGKILL)']
        """
        if self._watcher is not None and not self._stop_watch.is_set():
            with contextlib.suppress(Exception):
                self._catch_up()
        logged = read_events(self.state_dir, since)
        mine = self.timeline.events(since)
        if logged:  # the supervisor tells its own story: keep what only we could see
            kinds = {e.kind for e in logged}
            mine = [e for e in mine if e.source not in _DERIVED or e.kind not in kinds]
        return sorted([*logged, *mine], key=lambda e: e.time)

    def calls(self) -> dict[str, dict[str, int]]:
        """Calls made through this cluster's channels, per instance: ``{"ok": n, "failed": n}``."""
        out: dict[str, dict[str, int]] = {}
        for rec in self._recorders:
            for (name, ok), n in list(rec.counts.items()):
                row = out.setdefault(name, {"ok": 0, "failed": 0})
                row["ok" if ok else "failed"] += n
        return dict(sorted(out.items()))

    def channel(self, service: str | None = None, *, aio: bool = False, **options: Any) -> Any:
        """A balancing channel over this cluster (``aio=True``: a ``grpc.aio`` one).

        ``options`` are the client's (``policy``, ``retry_on``, ``hedge_after``,
        ``eject_after``, ``on_call``...). Its calls, ejections and failovers go into
        this cluster's timeline; it is closed when the fixture ends. Make an ``aio``
        channel inside the running event loop of the test.
        """
        if aio:
            from devcluster.client.aio import AioBalancedChannel as kind
        else:
            from devcluster.client import BalancedChannel as kind  # type: ignore[assignment]
        eject_after = options.get(
            "eject_after", inspect.signature(kind).parameters["eject_after"].default)
        recorder = CallRecorder(self.timeline, eject_after, options.pop("on_call", None))
        channel = kind(service, self.registry, on_call=recorder, **options)
        self._recorders.append(recorder)
        self._channels.append((channel, asyncio.get_running_loop() if aio else None))
        return channel

    # -- verbs, recorded with who asked ------------------------------------------------

    def _asked(self, names: str | Sequence[str], what: str) -> None:
        now, who = time.time(), self._who()
        for name in [names] if isinstance(names, str) else names:
            self.timeline.add(Event(now, EventKind.ASKED, name, who=who, source="test",
                                    detail=what))

    def kill(self, name: str | Sequence[str], signal: str = "SIGKILL") -> list[dict[str, Any]]:
        self._asked(name, f"kill {signal}")
        return super().kill(name, signal)

    def stop(self, name: str | Sequence[str]) -> list[dict[str, Any]]:
        self._asked(name, "stop")
        return super().stop(name)

    def start(self, name: str | Sequence[str], wait: bool = True) -> list[dict[str, Any]]:
        self._asked(name, "start")
        return super().start(name, wait)

    def restart(self, name: str | Sequence[str], wait: bool = True) -> list[dict[str, Any]]:
        self._asked(name, "restart")
        return super().restart(name, wait)

    def pause(self, name: str | Sequence[str]) -> list[dict[str, Any]]:
        self._asked(name, "pause")
        return super().pause(name)

    def resume(self, name: str | Sequence[str]) -> list[dict[str, Any]]:
        self._asked(name, "resume")
        return super().resume(name)

    def scale(self, counts: Mapping[str, int] | None = None, /, wait: bool = True,
              **kw: int) -> list[dict[str, Any]]:
        wanted = {**(counts or {}), **kw}
        self._asked(list(wanted), "scale " + " ".join(f"{k}={v}" for k, v in wanted.items()))
        return super().scale(wanted, wait=wait)

    def weight(self, name: str, weight: int) -> None:
        self._asked(name, f"weight {weight}")
        super().weight(name, weight)

    def enable(self, name: str) -> None:
        self._asked(name, "enable")
        super().enable(name)

    def disable(self, name: str) -> None:
        self._asked(name, "disable")
        super().disable(name)


def _close_channel(channel: Any, loop: asyncio.AbstractEventLoop | None) -> None:
    """Close a channel the test may have left open (an aio one only if its loop can run)."""
    with contextlib.suppress(Exception):
        if loop is None:
            channel.close()
        elif not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(channel.close())
