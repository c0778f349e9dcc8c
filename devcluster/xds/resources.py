"""Registry snapshot -> xDS resources, as pure functions (no socket, no clock, no state).

One set of resources per service (a record's ``service``: ``server1`` -> ``server``):

* a Listener named after the service, so a gRPC client dials ``xds:///greeter``: an
  HttpConnectionManager whose route sends every call to the service's cluster, with a
  retry policy on the route (gRFC A44), an optional HTTPFault filter (gRFC A33) and the
  router filter last;
* a Cluster of type EDS with outlier detection (gRFC A50) close to devcluster's own
  balanced client's ejection;
* a ClusterLoadAssignment with ONE LOCALITY PER INSTANCE. gRPC's default cluster policy
  weighs localities (``weighted_target``) and round-robins inside one; it ignores
  ``LbEndpoint.load_balancing_weight`` (and NACKs 0 there), so the registry weight goes on
  the locality. A restarted process gets a new locality name (its pid is in the
  ``sub_zone``): a client then makes a fresh subchannel instead of waiting out the
  reconnect backoff of the old one (measured: 7 ms against 2.8-3.6 s).

>>> res = build(snapshot)                                   # doctest: +SKIP
>>> res[LISTENER]["greeter"].name                           # doctest: +SKIP
'greeter'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from devcluster.registry.faults import Fault
from devcluster.registry.record import Record, Snapshot, State

#: A protobuf message (the envoy and protobuf modules ship no type information).
Message = Any

LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The four types, in the order a client needs them (and a server should send them).
TYPE_URLS: Final = (LISTENER, ROUTE, CLUSTER, ENDPOINT)
#: Types where a resource left out of a state-of-the-world response is deleted (A27).
FULL_STATE_TYPES: Final = frozenset({LISTENER, CLUSTER})

#: The Locality.region of every instance (zone: the service; sub_zone: the process).
REGION: Final = "devcluster"

#: EDS health statuses (envoy.config.core.v3.HealthStatus), as ints.
HEALTHY: Final[int] = health_check_pb2.HEALTHY
UNHEALTHY: Final[int] = health_check_pb2.UNHEALTHY
DRAINING: Final[int] = health_check_pb2.DRAINING

#: Registry state -> EDS health. Left out (not routed): STARTING (its process answers no
#: health check yet: clients could only fail on it) and BACKOFF (no process at all; the
#: restart brings a new pid, so a new locality, either way). PAUSED stays HEALTHY as in the
#: registry, which keeps advertising it: a frozen process is the hang that outlier
#: detection (and deadlines) are there to show, as for the balanced client.
HEALTH: Final[Mapping[State, int]] = MappingProxyType({
    State.SERVING: HEALTHY,
    State.PAUSED: HEALTHY,
    State.UNHEALTHY: UNHEALTHY,
    State.DRAINING: DRAINING,
    State.STOPPED: UNHEALTHY,
    State.KILLED: UNHEALTHY,
    State.EXITED: UNHEALTHY,
    State.FAILED: UNHEALTHY,
})

#: The HTTP fault filter's name: a route's override names it.
FAULT_FILTER: Final = "envoy.filters.http.fault"

#: ``Record.metadata`` key that marks an instance unhealthy whatever its state (a future
#: health-check flag): ``"true"`` -> UNHEALTHY.
UNHEALTHY_KEY: Final = "unhealthy"


@dataclass(frozen=True)
class Retry:
    """The route's retry policy (gRFC A44): a call that failed with one of ``on`` is tried
    again on another pick, up to ``attempts`` in all (gRPC caps that at 5).

    It saves the calls a SIGKILL catches before their response headers (measured: 15-20 of
    ~320 calls lost to 4 kills under 8 concurrent callers without it, none with it). A call
    whose headers had arrived is committed (gRFC A6) and fails with the process (0-2 of
    ~300 there): as in the balanced client, gRPC never replays a call the server saw."""

    on: tuple[str, ...] = ("unavailable",)
    attempts: int = 3
    base_backoff_s: float = 0.025
    max_backoff_s: float = 0.25


@dataclass(frozen=True)
class Outlier:
    """Outlier detection (gRFC A50), set close to the balanced client's ejection.

    The balanced client ejects an instance after one unreachable attempt or two timeouts in
    a row, never the last one, and probes it back after 0.2 s doubling to 5 s. gRPC knows
    only success-rate and failure-percentage ejection, evaluated every ``interval_s``: an
    instance with at least ``request_volume`` calls in an interval, ``failure_percent`` %
    of them failed, is ejected for ``base_ejection_s`` x (times ejected), at most
    ``max_ejection_s``; ``min_hosts`` 2 and ``max_ejection_percent`` 50 keep the last one.
    """

    interval_s: float = 1.0
    base_ejection_s: float = 1.0
    max_ejection_s: float = 5.0
    failure_percent: int = 50
    request_volume: int = 2
    min_hosts: int = 2
    max_ejection_percent: int = 50


@dataclass(frozen=True)
class Options:
    """How resources are built; the defaults suit a developer's cluster."""

    retry: Retry | None = Retry()
    outlier: Outlier | None = Outlier()
    faults: Mapping[str, Fault] = field(default_factory=lambda: MappingProxyType({}))
    """Fault per service name; a service absent here gets no fault filter."""
    rds: bool = False
    """Send the RouteConfiguration over RDS instead of inline in the Listener."""


#: Resources by type URL, then by name.
Resources = Mapping[str, Mapping[str, Message]]


def build(snapshot: Snapshot, options: Options = Options()) -> dict[str, dict[str, Message]]:
    """The four resource sets for every service in ``snapshot`` (unpacked messages).

    A service with at least one record, even one that is down or disabled, has its
    Listener and Cluster; only its endpoints follow the records' states. A fault on some
    of a service's routed instances (not all) splits its route: see :func:`split`.
    """
    out: dict[str, dict[str, Message]] = {url: {} for url in TYPE_URLS}
    by_service: dict[str, list[Record]] = {}
    for record in snapshot.records.values():
        by_service.setdefault(record.service, []).append(record)
    for service, records in sorted(by_service.items()):
        whole, parts = split(service, records, options.faults.get(service))
        route = route_configuration(service, options, parts)
        out[LISTENER][service] = listener(service, options, None if options.rds else route,
                                          whole if whole is not None or len(parts) == 1
                                          else Fault())
        if options.rds:
            out[ROUTE][service] = route
        for part in parts:
            out[CLUSTER][part.cluster] = cluster(part.cluster, options.outlier)
            out[ENDPOINT][part.cluster] = load_assignment(part.cluster, part.records)
    return out


@dataclass(frozen=True)
class Part:
    """One weighted cluster of a service's route: its records, and the fault its calls get
    (a per-route filter override, gRFC A39) or None."""

    cluster: str
    weight: int
    records: tuple[Record, ...]
    fault: Fault | None = None


def split(service: str, records: list[Record],
          service_fault: Fault | None) -> tuple[Fault | None, list[Part]]:
    """(the fault of the whole service or None, the weighted clusters of its route).

    The same fault on every routed instance (or one set on the service) is one HTTPFault
    filter on the listener, and one cluster. Otherwise each routed instance with a fault
    gets a cluster of its own, weighted by its registry weight, with the fault as a filter
    override; the rest stay in the service's cluster, weighted by the sum of their routed
    weights. Each instance's share stays exactly its weight over the service's routed
    total, and the split follows every registry change (a faulty instance that is drained,
    stopped or disabled leaves the split at once and is UNHEALTHY in the main cluster).
    Left: a faulty instance that hangs is alone in its cluster, where outlier detection
    keeps the last host; deadlines bound those calls until the registry says it is down.
    """
    if service_fault is not None and not service_fault.active:
        service_fault = None
    routed = [r for r in records if health(r) == HEALTHY]
    faults = {r.fault if r.fault is not None and r.fault.active else None for r in routed}
    if service_fault is not None or len(faults) <= 1:
        whole = service_fault if service_fault is not None else next(iter(faults), None)
        return whole, [Part(service, 1, tuple(records))]
    faulty = [r for r in routed if r.fault is not None and r.fault.active]
    rest = tuple(r for r in records if r not in faulty)
    parts = [Part(service, sum(r.weight for r in routed if r not in faulty), rest)]
    parts += [Part(f"{service}/{r.name}", r.weight, (r,), r.fault) for r in faulty]
    return None, parts


def pack(message: Message) -> Message:
    """``message`` in a ``google.protobuf.Any``."""
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


def _duration(seconds: float) -> Message:
    return duration_pb2.Duration(seconds=int(seconds), nanos=round((seconds % 1) * 1e9))


def _percent(percent: float) -> Message:
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION)


def listener(service: str, options: Options, route: Message | None,
             fault: Fault | None = None) -> Message:
    """An API listener (what gRPC clients ask LDS for) routing to ``service``'s cluster.

    ``route`` None: the route comes over RDS under the service's name. ``fault``: the
    HTTPFault filter's config (an inactive one when only some routes override it).
    """
    manager = http_connection_manager_pb2.HttpConnectionManager(http_filters=http_filters(fault))
    if route is None:
        manager.rds.route_config_name = service
        manager.rds.config_source.ads.SetInParent()
        manager.rds.config_source.resource_api_version = config_source_pb2.V3
    else:
        manager.route_config.CopyFrom(route)
    return listener_pb2.Listener(
        name=service, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager)))


def http_filters(fault: Fault | None) -> list[Message]:
    """The HTTP filters of a listener: the fault filter when a fault is given (an inactive
    one: only for routes to override), router last."""
    hcm = http_connection_manager_pb2
    filters = []
    if fault is not None:
        filters.append(hcm.HttpFilter(name=FAULT_FILTER,
                                      typed_config=pack(http_fault(fault))))
    filters.append(hcm.HttpFilter(name="envoy.filters.http.router",
                                  typed_config=pack(router_pb2.Router())))
    return filters


def http_fault(fault: Fault) -> Message:
    """The HTTPFault filter config for ``fault`` (gRFC A33: fixed delay, gRPC-status abort)."""
    config = fault_pb2.HTTPFault()
    if fault.delay_s > 0 and fault.delay_percent > 0:
        config.delay.CopyFrom(common_fault_pb2.FaultDelay(
            fixed_delay=_duration(fault.delay_s), percentage=_percent(fault.delay_percent)))
    if fault.abort_code > 0 and fault.abort_percent > 0:
        config.abort.CopyFrom(fault_pb2.FaultAbort(
            grpc_status=fault.abort_code, percentage=_percent(fault.abort_percent)))
    return config


def route_configuration(service: str, options: Options,
                        parts: list[Part] | None = None) -> Message:
    """Every call (any method) to ``service``'s cluster, or split over ``parts`` by weight,
    with the retry policy if any."""
    action = route_components_pb2.RouteAction()
    if parts is None or len(parts) == 1:
        action.cluster = service
    else:
        for part in parts:
            if part.weight <= 0:
                continue
            weighted = action.weighted_clusters.clusters.add(
                name=part.cluster, weight=wrappers_pb2.UInt32Value(value=part.weight))
            if part.fault is not None:
                weighted.typed_per_filter_config[FAULT_FILTER].CopyFrom(
                    pack(http_fault(part.fault)))
    if options.retry is not None:
        action.retry_policy.CopyFrom(retry_policy(options.retry))
    return route_pb2.RouteConfiguration(
        name=service,
        virtual_hosts=[route_components_pb2.VirtualHost(
            name=service, domains=["*"],
            routes=[route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix=""), route=action)])])


def retry_policy(retry: Retry) -> Message:
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(retry.on), num_retries=wrappers_pb2.UInt32Value(value=retry.attempts - 1))
    policy.retry_back_off.base_interval.CopyFrom(_duration(retry.base_backoff_s))
    policy.retry_back_off.max_interval.CopyFrom(_duration(retry.max_backoff_s))
    return policy


def cluster(service: str, outlier: Outlier | None) -> Message:
    """An EDS cluster (endpoints over ADS under the service's name), round robin."""
    out = cluster_pb2.Cluster(name=service, type=cluster_pb2.Cluster.EDS,
                              lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
    out.eds_cluster_config.service_name = service
    out.eds_cluster_config.eds_config.ads.SetInParent()
    out.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    if outlier is not None:
        out.outlier_detection.CopyFrom(outlier_detection(outlier))
    return out


def outlier_detection(outlier: Outlier) -> Message:
    u32 = wrappers_pb2.UInt32Value
    return outlier_detection_pb2.OutlierDetection(
        interval=_duration(outlier.interval_s),
        base_ejection_time=_duration(outlier.base_ejection_s),
        max_ejection_time=_duration(outlier.max_ejection_s),
        max_ejection_percent=u32(value=outlier.max_ejection_percent),
        failure_percentage_threshold=u32(value=outlier.failure_percent),
        enforcing_failure_percentage=u32(value=100),
        failure_percentage_minimum_hosts=u32(value=outlier.min_hosts),
        failure_percentage_request_volume=u32(value=outlier.request_volume),
        # Off: gRPC would otherwise run success-rate ejection with its defaults too.
        enforcing_success_rate=u32(value=0))


def health(record: Record) -> int | None:
    """The EDS health of ``record``, or None when it must not be routed at all."""
    if not record.enabled or record.weight <= 0:
        return None
    status = HEALTH.get(record.state)
    if status is None:
        return None
    if record.metadata.get(UNHEALTHY_KEY, "").lower() in ("1", "true", "yes"):
        return UNHEALTHY
    return status


def locality_name(record: Record) -> str:
    """The ``sub_zone`` of ``record``'s locality: the instance and its process.

    A new process (restart: new pid) is a new locality, so clients connect to it at once
    instead of waiting out the reconnect backoff they keep for the old one (measured with
    grpcio 1.85, a restart on the same port while the record stayed serving: back after
    261 ms with the name alone, 9.6 ms with the pid in it). A record that went through an
    UNHEALTHY or left-out state has lost its subchannel anyway.
    """
    process = record.pid if record.pid is not None else record.started_at
    return f"{record.name}/{process}/{record.restarts}"


def socket_address(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None for what EDS cannot carry."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or host.startswith("unix"):
        return None
    return host.strip("[]"), int(port)


def load_assignment(service: str, records: Iterable[Record]) -> Message:
    """One locality per routed instance, weighted by its registry weight, by name."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=service)
    for record in sorted(records, key=lambda r: r.name):
        status = health(record)
        parsed = socket_address(record.address)
        if status is None or parsed is None:
            continue
        host, port = parsed
        endpoint = endpoint_components_pb2.LbEndpoint(health_status=status)
        endpoint.endpoint.address.socket_address.CopyFrom(
            address_pb2.SocketAddress(address=host, port_value=port))
        endpoint.endpoint.hostname = record.name
        assignment.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(region=REGION, zone=service, sub_zone=locality_name(record)),
            lb_endpoints=[endpoint],
            load_balancing_weight=wrappers_pb2.UInt32Value(value=record.weight),
            priority=0))
    return assignment
