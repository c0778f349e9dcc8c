"""The xDS snapshot cache and one ADS stream's protocol, sans-IO (no socket, no loop).

As envoy's go-control-plane does it: the cache holds, per resource type, the packed
resources by name and a version that grows only when that type's content changes, so an
unchanged registry snapshot makes no new version and a client that ACKed version N is
never sent N again on a change. :class:`Stream` is one client's state-of-the-world ADS
conversation: requests in, responses out, with nonces, ACK/NACK and subscriptions. The
grpc.aio server (devcluster.xds.server) only moves its values to and from the wire.

All clients see the same resources (one registry): the cache is not keyed by node. A
per-node view (a fault for one client only) would key :class:`SnapshotCache` by
``node.id`` here without changing :class:`Stream`.

>>> cache = SnapshotCache()
>>> cache.set({LISTENER: {}})
{}
>>> cache.version(LISTENER)
'0'
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from devcluster.xds.resources import ENDPOINT, LISTENER, TYPE_URLS, pack

__all__ = ["ENDPOINT", "LISTENER", "Nack", "Request", "Response", "SnapshotCache", "Stream"]

#: Names changed (added, changed or removed) per type URL, only for types that changed.
Changes = Mapping[str, frozenset[str]]


@dataclass
class _TypeSet:
    version: int = 0
    packed: dict[str, Any] = field(default_factory=dict)
    """Name -> ``google.protobuf.Any``, shared by every stream (packed once)."""
    blobs: dict[str, bytes] = field(default_factory=dict)
    """Name -> the deterministic serialization, to tell a real change."""


class SnapshotCache:
    """The current resources of every type, each type versioned on its own."""

    def __init__(self) -> None:
        self._types = {url: _TypeSet() for url in TYPE_URLS}

    def set(self, resources: Mapping[str, Mapping[str, Any]]) -> dict[str, frozenset[str]]:
        """Replace the resources (unpacked messages by type, then name); return what changed.

        A type absent from ``resources`` is left as it is. A type whose content is the same
        keeps its version and is absent from the result.
        """
        changes: dict[str, frozenset[str]] = {}
        for url, messages in resources.items():
            current = self._types[url]
            blobs = {name: m.SerializeToString(deterministic=True) for name, m in messages.items()}
            if blobs == current.blobs:
                continue
            changed = {n for n, b in blobs.items() if current.blobs.get(n) != b}
            changed |= current.blobs.keys() - blobs.keys()
            packed = {n: current.packed[n] if n not in changed else pack(messages[n])
                      for n in blobs}
            self._types[url] = _TypeSet(current.version + 1, packed, blobs)
            changes[url] = frozenset(changed)
        return changes

    def version(self, url: str) -> str:
        return str(self._types[url].version)

    def names(self, url: str) -> frozenset[str]:
        return frozenset(self._types[url].packed)

    def get(self, url: str, names: Set[str] | None) -> list[Any]:
        """The packed resources of ``url`` among ``names`` (None: all), by name."""
        packed = self._types[url].packed
        wanted = packed.keys() if names is None else names & packed.keys()
        return [packed[n] for n in sorted(wanted)]


@dataclass(frozen=True)
class Request:
    """What the stream needs of a DiscoveryRequest."""

    type_url: str
    names: frozenset[str]
    """Empty: every resource of the type (the wildcard), as in LDS/CDS of Envoy."""
    version_info: str = ""
    response_nonce: str = ""
    error: str | None = None
    """``error_detail.message`` of a NACK; None for a request or an ACK."""


@dataclass(frozen=True)
class Response:
    """A DiscoveryResponse to send."""

    type_url: str
    version_info: str
    nonce: str
    resources: list[Any]


@dataclass(frozen=True)
class Nack:
    """A client rejected ``version`` of ``type_url``."""

    type_url: str
    version: str
    error: str


@dataclass
class _Sub:
    names: frozenset[str] | None
    nonce: str = ""
    sent_version: str | None = None
    acked_version: str | None = None
    answered: bool = True
    """The client has ACKed or NACKed the last response sent (its nonce)."""


class Stream:
    """One ADS stream (state of the world): the subscriptions and what was sent on it."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._subs: dict[str, _Sub] = {}
        self._nonce = 0

    def subscribed(self, url: str) -> frozenset[str] | None:
        """The names subscribed to for ``url`` (None: all of them, or not subscribed)."""
        sub = self._subs.get(url)
        return None if sub is None else sub.names

    def acked(self, url: str) -> str | None:
        sub = self._subs.get(url)
        return None if sub is None else sub.acked_version

    def waiting(self) -> bool:
        """A response sent on this stream is not answered yet: the client has not applied
        (ACKed) or rejected (NACKed) the newest resources it was sent. A drain waits on it."""
        return any(not sub.answered for sub in self._subs.values())

    def on_request(self, request: Request) -> tuple[Response | None, Nack | None]:
        """A request, ACK or NACK arrived: what to send back, and the NACK to report."""
        url = request.type_url
        if url not in TYPE_URLS:
            return None, None  # a type we do not serve: its watchers time out on their own
        names = request.names or None
        sub = self._subs.get(url)
        if sub is None:  # first request of the type on this stream: always answered
            sub = self._subs[url] = _Sub(names)
            return self._respond(url, sub), None
        if request.response_nonce != sub.nonce:
            # Stale: it answers an older response; the client will ACK or NACK the newest
            # one with its whole subscription, which is handled then.
            return None, None
        nack = None
        sub.answered = True
        if request.error is not None:
            nack = Nack(url, sub.sent_version or "", request.error)
        else:
            sub.acked_version = request.version_info
        added = (names is None and sub.names is not None) or (
            names is not None and sub.names is not None and bool(names - sub.names))
        sub.names = names
        # A NACKed version is not sent again: only new names, or a new version, get a reply.
        return (self._respond(url, sub) if added else None), nack

    def on_change(self, changes: Changes) -> list[Response]:
        """The cache changed ``changes``: the responses this stream needs, in type order."""
        out = []
        for url in TYPE_URLS:
            changed = changes.get(url)
            sub = self._subs.get(url)
            if not changed or sub is None:
                continue
            if sub.names is not None and sub.names.isdisjoint(changed):
                continue  # O(changes): a stream watching other resources hears nothing
            if sub.sent_version == self._cache.version(url):
                continue
            out.append(self._respond(url, sub))
        return out

    def _respond(self, url: str, sub: _Sub) -> Response:
        self._nonce += 1
        sub.nonce = str(self._nonce)
        sub.sent_version = self._cache.version(url)
        sub.answered = False
        return Response(url, sub.sent_version, sub.nonce, self._cache.get(url, sub.names))

