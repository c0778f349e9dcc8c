"""How a file registry is followed: re-read ``registry.json`` whenever it changes.

On Linux the watcher blocks on inotify (:mod:`devcluster.registry.inotify`) and
re-reads as soon as the kernel reports the ``os.replace``; elsewhere (or when the
user's inotify limits are reached) it uses watchfiles, as before. Either way it
re-reads every ``rescan_ms`` when nothing happened (a process that died without a
registry write, a state dir re-created), skips snapshots equal to the last one, and
re-arms when the state dir is deleted or replaced.

Measured with bench/weights.py (registry write returned -> first call routed by the
new weights, 4 greeters, 2 shared cores): watchfiles at step 4 ms, p50 7.6 / p99
14.8 ms; inotify, see bench/results.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

from devcluster import defaults
from devcluster.errors import RegistryError
from devcluster.registry import inotify
from devcluster.registry.inotify import DirWatch, Wake
from devcluster.registry.record import Snapshot


class FileRegistry(Protocol):
    """What following needs of a :class:`~devcluster.registry.file.FileRegistry`; a
    protocol, so this module does not import the one that imports it (no cycle)."""

    @property
    def state_dir(self) -> Path: ...
    debounce_ms: int
    step_ms: int
    rescan_ms: int

    def snapshot(self) -> Snapshot: ...
    def ensure_state_dir(self) -> Path: ...

log = logging.getLogger(__name__)

REGISTRY_FILE = defaults.REGISTRY_FILE


class _NoInotify(Exception):
    """inotify cannot watch here (limits reached): fall back to watchfiles."""


def watch(registry: FileRegistry, stop: threading.Event | None) -> Iterator[Snapshot]:
    """See :meth:`FileRegistry.watch`."""
    stop = stop if stop is not None else threading.Event()
    follow = _Follower(registry)
    yield follow.first()
    if inotify.available():
        try:
            yield from _inotify_watch(registry, follow, stop)
            return
        except _NoInotify as e:
            log.info("registry watch: %s; using watchfiles", e)
    yield from _watchfiles_watch(registry, follow, stop)


async def awatch(registry: FileRegistry) -> AsyncIterator[Snapshot]:
    """See :meth:`FileRegistry.awatch`."""
    follow = _Follower(registry)
    yield follow.first()
    if inotify.available():
        try:
            async for snap in _inotify_awatch(registry, follow):
                yield snap
            return
        except _NoInotify as e:
            log.info("registry watch: %s; using watchfiles", e)
    async for snap in _watchfiles_awatch(registry, follow):
        yield snap


# -- inotify --------------------------------------------------------------------------

def _arm(registry: FileRegistry, follow: _Follower, stop: threading.Event | None) -> DirWatch:
    while True:
        follow.arm()
        try:
            return DirWatch(registry.state_dir, REGISTRY_FILE, stop)
        except FileNotFoundError:
            continue  # deleted again between arm() and the watch: arm() re-creates it
        except OSError as e:
            raise _NoInotify(f"cannot watch {registry.state_dir} with inotify: {e}") from e


def _hold(last_read: float, step_s: float) -> float:
    """Seconds to wait before the next re-read: re-reads are at least a step apart, so a
    burst of writes costs a watcher at most 1000/step_ms reads a second."""
    return last_read + step_s - time.monotonic()


def _inotify_watch(registry: FileRegistry, follow: _Follower,
                   stop: threading.Event) -> Iterator[Snapshot]:
    step_s, rescan_s = registry.step_ms / 1000, registry.rescan_ms / 1000
    last_read = 0.0
    while not stop.is_set():
        with _arm(registry, follow, stop) as dir_watch:
            wake = Wake.CHANGED  # a write may have landed before this watch was armed
            while wake is not Wake.GONE:
                if wake is Wake.STOPPED:
                    return
                if wake is Wake.CHANGED:
                    if (hold := _hold(last_read, step_s)) > 0:
                        if stop.wait(hold):
                            return
                        if dir_watch.drain() is Wake.GONE:  # what came during the hold
                            break
                    last_read = time.monotonic()  # (a rescan never holds a change back)
                if (snap := follow.fresh()) is not None:
                    yield snap
                if follow.dir_replaced():
                    break
                wake = dir_watch.wait(rescan_s)


async def _inotify_awatch(registry: FileRegistry, follow: _Follower) -> AsyncIterator[Snapshot]:
    import asyncio

    step_s, rescan_s = registry.step_ms / 1000, registry.rescan_ms / 1000
    last_read = 0.0
    while True:
        with _arm(registry, follow, None) as dir_watch:
            wake = Wake.CHANGED
            while wake is not Wake.GONE:
                if wake is Wake.CHANGED:
                    if (hold := _hold(last_read, step_s)) > 0:
                        await asyncio.sleep(hold)
                        if dir_watch.drain() is Wake.GONE:
                            break
                    last_read = time.monotonic()
                if (snap := follow.fresh()) is not None:
                    yield snap
                if follow.dir_replaced():
                    break
                wake = await dir_watch.await_change(rescan_s)


# -- watchfiles (other platforms) ----------------------------------------------------------

def _watchfiles_watch(registry: FileRegistry, follow: _Follower,
                      stop: threading.Event) -> Iterator[Snapshot]:
    import watchfiles  # only watchers pay for it, not every command

    while not stop.is_set():
        follow.arm()
        batches = watchfiles.watch(registry.state_dir, stop_event=stop,
                                   **_watch_options(registry))
        with contextlib.closing(batches), contextlib.suppress(FileNotFoundError):
            for _batch in batches:
                if (snap := follow.fresh()) is not None:
                    yield snap
                if stop.is_set() or follow.dir_replaced():
                    break


async def _watchfiles_awatch(registry: FileRegistry,
                             follow: _Follower) -> AsyncIterator[Snapshot]:
    import watchfiles

    while True:
        follow.arm()
        batches = watchfiles.awatch(registry.state_dir, **_watch_options(registry))
        with contextlib.suppress(FileNotFoundError):  # dir deleted again meanwhile
            async with contextlib.aclosing(batches):
                async for _batch in batches:
                    if (snap := follow.fresh()) is not None:
                        yield snap
                    if follow.dir_replaced():
                        break


def _watch_options(registry: FileRegistry) -> dict[str, Any]:
    def is_registry(_change: object, path: str) -> bool:
        return os.path.basename(path) == REGISTRY_FILE

    return {
        "watch_filter": is_registry,
        "debounce": registry.debounce_ms,
        "step": registry.step_ms,
        # A timeout that yields an empty batch drives the periodic re-read.
        "rust_timeout": registry.rescan_ms,
        "yield_on_timeout": True,
        # Logs and sockets may live in sub-directories; their churn is not ours.
        "recursive": False,
    }


class _Follower:
    """What a watcher has yielded so far, to skip re-reads that show nothing new."""

    def __init__(self, registry: FileRegistry) -> None:
        self._registry = registry
        self._last: Snapshot | None = None
        self._inode: int | None = None
        self._warned = False

    def first(self) -> Snapshot:
        # Raises on a corrupt file: a watcher that cannot start should say so at once.
        self._registry.ensure_state_dir()
        self._inode = _inode(self._registry.state_dir)
        self._last = self._registry.snapshot()
        return self._last

    def fresh(self) -> Snapshot | None:
        """The registry if it differs from the last yield, else None."""
        try:
            snap = self._registry.snapshot()
        except RegistryError as e:
            # Keep serving the last good view: the file is only ever corrupted by hand,
            # and a fix or `recover()` shows up as the next change.
            if not self._warned:
                log.warning("registry watch: %s", e)
                self._warned = True
            return None
        self._warned = False
        if snap == self._last:
            return None
        self._last = snap
        return snap

    def arm(self) -> None:
        """Make sure the state dir exists and note the inode the watch will follow."""
        self._registry.ensure_state_dir()
        self._inode = _inode(self._registry.state_dir)

    def dir_replaced(self) -> bool:
        """True if the state dir is gone or another inode: the watcher went blind."""
        return _inode(self._registry.state_dir) != self._inode


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None
