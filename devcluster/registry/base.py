"""The backend-neutral registry interface.

A backend stores :class:`~devcluster.registry.record.Record` values under their
names, with a registry-wide ``revision`` that grows on every write, and pushes
snapshots to watchers. The file backend and the etcd backend implement it.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from devcluster.registry.record import Record, Snapshot

__all__ = ["Registry"]

class Registry(abc.ABC):
    """Where instances are registered and found.

    >>> reg = FileRegistry(tmp_path)                       # doctest: +SKIP
    >>> reg.register(Record("server1", "server", "127.0.0.1:50051"))  # doctest: +SKIP
    >>> reg.update("server1", weight=5).weight             # doctest: +SKIP
    5
    """

    @abc.abstractmethod
    def register(self, record: Record) -> Record:
        """Insert or replace ``record`` (its ``updated_at`` is set); return it as stored."""

    @abc.abstractmethod
    def update(self, name: str, **fields: Any) -> Record:
        """Change fields of one record atomically; unknown name -> UnknownInstanceError."""

    @abc.abstractmethod
    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> Snapshot:
        """Change several records in one write (one revision); unknown names are errors."""

    def modify(self, decide: Callable[[Snapshot], Mapping[str, Mapping[str, Any]]]) -> Snapshot:
        """Read-modify-write: ``decide(current)`` returns the changes to apply.

        The file and etcd backends override this to be atomic (lock, compare-and-swap)
        so increments from many writers are never lost; this default is for in-process
        registries with a single writer.
        """
        return self.update_many(decide(self.snapshot()))

    @abc.abstractmethod
    def deregister(self, name: str) -> None:
        """Remove a record; removing an absent one is not an error."""

    @abc.abstractmethod
    def reset(self, records: Iterable[Record]) -> Snapshot:
        """Replace every record at once (a fresh ``up``); ``revision`` keeps growing."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The whole registry now."""

    def get(self, name: str) -> Record:
        """One record; unknown name -> UnknownInstanceError."""
        from devcluster.errors import UnknownInstanceError

        snap = self.snapshot()
        try:
            return snap.records[name]
        except KeyError:
            raise UnknownInstanceError(name, list(snap.records)) from None

    @abc.abstractmethod
    def watch(self, stop: threading.Event | None = None) -> Iterator[Snapshot]:
        """Yield the current snapshot, then a new one after every change, until ``stop``."""

    @abc.abstractmethod
    def awatch(self) -> AsyncIterator[Snapshot]:
        """Async twin of :meth:`watch`; ends when the consumer stops iterating."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, leases). The file backend holds none."""
