"""What every instance of one supervisor shares (:class:`Runtime`).

Its own module so that an instance's parts (:mod:`devcluster.supervisor.lifecycle`,
:mod:`devcluster.supervisor.instance`) and the supervisor use it without importing
one another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import defaults
from devcluster.events import Event, EventKind, EventLog
from devcluster.supervisor.drain import Watchers
from devcluster.supervisor.logs import LogSink
from devcluster.supervisor.preload import Preloader
from devcluster.supervisor.recorder import Recorder
from devcluster.supervisor.watchdog import Watchdog


def _unowned(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    coro.close()
    raise RuntimeError("instances start only while their supervisor runs")


@dataclass(frozen=True)
class Runtime:
    """What every instance of one supervisor shares."""

    records: Recorder
    """The registry writer: state changes are queued, never written on the loop."""
    sink: LogSink
    cwd: Path
    grace: float = defaults.GRACE
    ready_timeout: float = defaults.READY_TIMEOUT
    watchdog: Watchdog | None = None
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = _unowned
    """Creates a task owned by the supervisor's task group: no instance task is unowned."""
    ours: Callable[[], set[int]] = set
    """Pids of the processes the supervisor started itself (not orphans it adopted)."""
    events: EventLog | None = None
    """The cluster's timeline (``events.jsonl``); None records nothing."""
    preload: Preloader | None = None
    """The fork servers of preloaded types (``preload`` in devcluster.toml); None: every
    instance is exec'd."""
    advertise_host: str = defaults.ADVERTISE_HOST
    """The host part of the addresses registered (``$DEVCLUSTER_ADVERTISE_HOST``)."""
    watchers: Watchers | None = None
    """Who watches the registry: a drain waits until they applied a change (None: a
    stop that drains waits the fixed :data:`~devcluster.supervisor.drain.DRAIN_BOUND`)."""
    ending: Callable[[], bool] = bool
    """True once the whole cluster shuts down: its final sweep covers every instance, so
    an instance that exits then skips its own (a /proc scan each: at N=100 they were
    29 % of the supervisor's samples during shutdown, py-spy)."""

    def event(self, kind: EventKind, name: str | None, **fields: Any) -> None:
        """Append one event to the timeline (a one-line write: cheap on the loop)."""
        if self.events is not None:
            self.events.append(Event(time.time(), kind, name, **fields))
