"""The snapshot cache's versions and one ADS stream's protocol, without a socket."""

from __future__ import annotations

from types import MappingProxyType

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

from devcluster.registry.record import Record, Snapshot, State
from devcluster.xds import resources as r
from devcluster.xds.cache import Nack, Request, SnapshotCache, Stream

L, C, E = r.LISTENER, r.CLUSTER, r.ENDPOINT


def snap(revision: int = 1, **weights: int) -> Snapshot:
    records = {f"{svc}.{i}": Record(f"{svc}.{i}", svc, f"127.0.0.1:{5000 + i}", weight=w,
                                    state=State.SERVING, pid=100 + i)
               for i, (svc, w) in enumerate(
                   (name.split("_")[0], w) for name, w in sorted(weights.items()))}
    return Snapshot(revision, MappingProxyType(records))


def cache_of(snapshot: Snapshot) -> tuple[SnapshotCache, dict[str, frozenset[str]]]:
    cache = SnapshotCache()
    return cache, cache.set(r.build(snapshot))


def test_an_unchanged_snapshot_makes_no_new_version():
    cache, changes = cache_of(snap(greeter_a=1, greeter_b=1))
    assert set(changes) == {L, C, E}
    versions = {url: cache.version(url) for url in r.TYPE_URLS}
    # A new registry revision with the same content (e.g. an updated_at) changes nothing.
    assert cache.set(r.build(snap(2, greeter_a=1, greeter_b=1))) == {}
    assert {url: cache.version(url) for url in r.TYPE_URLS} == versions


def test_a_weight_change_bumps_only_the_endpoints_version():
    cache, _ = cache_of(snap(greeter_a=1, greeter_b=1, server_a=1))
    before = {url: cache.version(url) for url in r.TYPE_URLS}
    changes = cache.set(r.build(snap(2, greeter_a=5, greeter_b=1, server_a=1)))
    assert changes == {E: frozenset({"greeter"})}
    assert cache.version(E) == str(int(before[E]) + 1)
    assert cache.version(L) == before[L] and cache.version(C) == before[C]


def test_a_removed_service_is_a_change_and_gone():
    cache, _ = cache_of(snap(greeter_a=1, server_a=1))
    changes = cache.set(r.build(snap(2, greeter_a=1)))
    assert changes[L] == changes[C] == changes[E] == frozenset({"server"})
    assert cache.names(L) == {"greeter"}


def test_unchanged_resources_keep_their_packed_object():
    cache, _ = cache_of(snap(greeter_a=1, server_a=1))
    (server_before,) = cache.get(E, {"server"})
    cache.set(r.build(snap(2, greeter_a=3, server_a=1)))
    (server_after,) = cache.get(E, {"server"})
    assert server_after is server_before  # packed once, shared by every stream


def req(url: str, *names: str, version: str = "", nonce: str = "", error: str | None = None):
    return Request(url, frozenset(names), version, nonce, error)


def test_first_request_answered_then_ack_quiet():
    cache, _ = cache_of(snap(greeter_a=1))
    stream = Stream(cache)
    resp, nack = stream.on_request(req(L, "greeter"))
    assert nack is None and resp is not None
    assert resp.version_info == cache.version(L) and len(resp.resources) == 1
    listener = listener_pb2.Listener()
    assert resp.resources[0].Unpack(listener)
    assert listener.name == "greeter"
    # The ACK: nothing to send, and it is recorded.
    assert stream.on_request(req(L, "greeter", version=resp.version_info, nonce=resp.nonce)) == (
        None, None)
    assert stream.acked(L) == resp.version_info


def test_a_change_reaches_only_streams_watching_it_and_never_twice():
    cache, _ = cache_of(snap(greeter_a=1, server_a=1))
    greeter, server = Stream(cache), Stream(cache)
    g, _ = greeter.on_request(req(E, "greeter"))
    s, _ = server.on_request(req(E, "server"))
    assert g and s
    greeter.on_request(req(E, "greeter", version=g.version_info, nonce=g.nonce))
    changes = cache.set(r.build(snap(2, greeter_a=4, server_a=1)))
    assert server.on_change(changes) == []
    (update,) = greeter.on_change(changes)
    assert update.version_info != g.version_info
    cla = endpoint_pb2.ClusterLoadAssignment()
    assert update.resources[0].Unpack(cla) and cla.endpoints[0].load_balancing_weight.value == 4
    greeter.on_request(req(E, "greeter", version=update.version_info, nonce=update.nonce))
    # The same change again (a registry write that changed nothing we serve): silence.
    assert greeter.on_change(changes) == []
    assert greeter.on_change(cache.set(r.build(snap(3, greeter_a=4, server_a=1)))) == []


def test_a_nack_is_reported_once_and_the_version_not_sent_again():
    cache, _ = cache_of(snap(greeter_a=1))
    stream = Stream(cache)
    first, _ = stream.on_request(req(C, "greeter"))
    assert first
    resp, nack = stream.on_request(req(C, "greeter", version="", nonce=first.nonce, error="bad"))
    assert resp is None
    assert nack == Nack(C, first.version_info, "bad")
    assert stream.acked(C) is None
    # The client repeats its request with the same nonce: no new NACK, no resend loop.
    assert stream.on_request(req(C, "greeter", nonce="stale")) == (None, None)


def test_stale_nonce_ignored_new_names_answered():
    cache, _ = cache_of(snap(greeter_a=1, server_a=1))
    stream = Stream(cache)
    first, _ = stream.on_request(req(C, "greeter"))
    assert first
    assert stream.on_request(req(C, "greeter", "server", nonce="old")) == (None, None)
    resp, _ = stream.on_request(req(C, "greeter", "server", version=first.version_info,
                                    nonce=first.nonce))
    assert resp is not None and len(resp.resources) == 2
    # Unsubscribing asks for nothing new: no response.
    resp2, _ = stream.on_request(req(C, "greeter", version=resp.version_info, nonce=resp.nonce))
    assert resp2 is None and stream.subscribed(C) == {"greeter"}


def test_a_type_we_do_not_serve_is_ignored():
    cache, _ = cache_of(snap(greeter_a=1))
    assert Stream(cache).on_request(req("type.googleapis.com/x.Y", "a")) == (None, None)


def test_a_stream_waits_until_it_answered_every_response_sent():
    """What a drain waits on (devcluster.supervisor.drain): the newest response of every
    type ACKed or NACKed; a change a stream does not watch keeps it settled."""
    cache, _ = cache_of(snap(greeter_a=1, server_a=1))
    greeter, server = Stream(cache), Stream(cache)
    assert not greeter.waiting()  # subscribed to nothing yet
    g, _ = greeter.on_request(req(E, "greeter"))
    s, _ = server.on_request(req(E, "server"))
    assert g and s and greeter.waiting() and server.waiting()
    greeter.on_request(req(E, "greeter", version=g.version_info, nonce=g.nonce))
    server.on_request(req(E, "server", version=s.version_info, nonce=s.nonce))
    assert not greeter.waiting() and not server.waiting()
    changes = cache.set(r.build(snap(2, greeter_a=4, server_a=1)))
    (update,) = greeter.on_change(changes)
    assert server.on_change(changes) == [] and not server.waiting()
    assert greeter.waiting()
    # An ACK of the older response (a stale nonce) is not the answer.
    greeter.on_request(req(E, "greeter", version=g.version_info, nonce=g.nonce))
    assert greeter.waiting()
    greeter.on_request(req(E, "greeter", version=g.version_info, nonce=update.nonce,
                           error="no"))
    assert not greeter.waiting()  # a NACK is an answer: the client will not apply it
