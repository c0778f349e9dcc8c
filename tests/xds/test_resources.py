"""Registry snapshot -> xDS resources, without a socket."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from envoy.config.core.v3 import health_check_pb2 as hc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from devcluster.registry.record import Record, Snapshot, State
from devcluster.xds import resources as r


def rec(name: str, **fields) -> Record:
    base = Record(name, name.rstrip("0123456789.") , f"127.0.0.1:{5000 + int(name[-1])}",
                  state=State.SERVING, pid=100 + int(name[-1]), started_at=1.0)
    return base.with_(**fields)


def snap(*records: Record, revision: int = 1) -> Snapshot:
    return Snapshot(revision, MappingProxyType({x.name: x for x in records}))


def localities(snapshot: Snapshot, service: str = "greeter") -> dict[str, tuple[int, int]]:
    """Instance name -> (locality weight, health) of the service's load assignment."""
    cla = r.build(snapshot)[r.ENDPOINT][service]
    return {loc.lb_endpoints[0].endpoint.hostname:
            (loc.load_balancing_weight.value, loc.lb_endpoints[0].health_status)
            for loc in cla.endpoints}


def manager(listener) -> object:
    out = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(out)
    return out


def test_one_resource_set_per_service_named_after_it():
    res = r.build(snap(rec("greeter.1"), rec("greeter.2"), rec("server1"), rec("server2")))
    for url in (r.LISTENER, r.CLUSTER, r.ENDPOINT):
        assert set(res[url]) == {"greeter", "server"}
    assert res[r.ROUTE] == {}  # inline route by default
    lst = res[r.LISTENER]["greeter"]
    assert lst.name == "greeter"
    route = manager(lst).route_config.virtual_hosts[0].routes[0]
    assert route.route.cluster == "greeter" and route.match.prefix == ""
    cluster = res[r.CLUSTER]["greeter"]
    assert cluster.eds_cluster_config.service_name == "greeter"
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert res[r.ENDPOINT]["server"].cluster_name == "server"


def test_one_locality_per_instance_weighted_by_the_registry():
    got = localities(snap(rec("greeter.1", weight=5), rec("greeter.2"), rec("greeter.3")))
    assert got == {"greeter.1": (5, hc.HEALTHY), "greeter.2": (1, hc.HEALTHY),
                   "greeter.3": (1, hc.HEALTHY)}
    cla = r.build(snap(rec("greeter.1", weight=5)))[r.ENDPOINT]["greeter"]
    (loc,) = cla.endpoints
    assert not loc.lb_endpoints[0].HasField("load_balancing_weight")  # 0 there is NACKed
    assert loc.lb_endpoints[0].endpoint.address.socket_address.port_value == 5001


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, hc.HEALTHY),
    ({"state": State.PAUSED}, hc.HEALTHY),
    ({"state": State.DRAINING}, hc.DRAINING),
    ({"state": State.STOPPED}, hc.UNHEALTHY),
    ({"state": State.KILLED}, hc.UNHEALTHY),
    ({"state": State.EXITED}, hc.UNHEALTHY),
    ({"state": State.FAILED}, hc.UNHEALTHY),
    ({"metadata": {"unhealthy": "true"}}, hc.UNHEALTHY),
    ({"state": State.STARTING}, None),
    ({"state": State.BACKOFF}, None),
    ({"weight": 0}, None),
    ({"enabled": False}, None),
    ({"enabled": False, "state": State.DRAINING}, None),
    ({"address": "unix:/tmp/x.sock"}, None),
])
def test_state_to_health(fields, expected):
    got = localities(snap(rec("greeter.1", **fields), rec("greeter.2")))
    assert got.get("greeter.1", (None, None))[1] == expected
    assert got["greeter.2"] == (1, hc.HEALTHY)


def test_a_restart_is_a_new_locality_and_a_weight_change_is_not():
    def sub_zone(record: Record) -> str:
        cla = r.build(snap(record))[r.ENDPOINT]["greeter"]
        return str(cla.endpoints[0].locality.sub_zone)

    before = rec("greeter.1")
    assert sub_zone(before) != sub_zone(before.with_(pid=999, restarts=1))
    assert sub_zone(before) != sub_zone(before.with_(pid=999))  # `start` after `stop`
    assert sub_zone(before) == sub_zone(before.with_(weight=7))
    assert sub_zone(before) == sub_zone(before.with_(state=State.DRAINING))


def test_a_service_whose_instances_are_all_down_keeps_its_listener_and_cluster():
    res = r.build(snap(rec("greeter.1", state=State.STARTING)))
    assert "greeter" in res[r.LISTENER] and "greeter" in res[r.CLUSTER]
    assert len(res[r.ENDPOINT]["greeter"].endpoints) == 0


def test_retry_on_unavailable_and_outlier_detection_by_default():
    res = r.build(snap(rec("greeter.1")))
    action = manager(res[r.LISTENER]["greeter"]).route_config.virtual_hosts[0].routes[0].route
    assert action.retry_policy.retry_on == "unavailable"
    assert action.retry_policy.num_retries.value == 2
    od = res[r.CLUSTER]["greeter"].outlier_detection
    assert od.enforcing_failure_percentage.value == 100
    assert od.failure_percentage_request_volume.value == 2
    assert od.failure_percentage_minimum_hosts.value == 2  # never eject a lone instance
    assert od.enforcing_success_rate.value == 0
    bare = r.build(snap(rec("greeter.1")), r.Options(retry=None, outlier=None))
    action = manager(bare[r.LISTENER]["greeter"]).route_config.virtual_hosts[0].routes[0].route
    assert not action.HasField("retry_policy")
    assert not bare[r.CLUSTER]["greeter"].HasField("outlier_detection")


def test_router_is_the_only_filter_without_a_fault():
    filters = manager(r.build(snap(rec("greeter.1")))[r.LISTENER]["greeter"]).http_filters
    assert [f.name for f in filters] == ["envoy.filters.http.router"]


def test_a_fault_adds_the_fault_filter_before_the_router():
    options = r.Options(faults={"greeter": r.Fault(delay_s=0.25, delay_percent=10,
                                                   abort_code=14, abort_percent=2.5)})
    res = r.build(snap(rec("greeter.1"), rec("server1")), options)
    filters = manager(res[r.LISTENER]["greeter"]).http_filters
    assert [f.name for f in filters] == ["envoy.filters.http.fault", "envoy.filters.http.router"]
    fault = fault_pb2.HTTPFault()
    assert filters[0].typed_config.Unpack(fault)
    assert fault.delay.fixed_delay.ToMilliseconds() == 250
    assert fault.delay.percentage.numerator == 100_000  # of a million: 10 %
    assert fault.abort.grpc_status == 14
    assert fault.abort.percentage.numerator == 25_000
    other = manager(res[r.LISTENER]["server"]).http_filters
    assert [f.name for f in other] == ["envoy.filters.http.router"]


@pytest.mark.parametrize("bad", [{"delay_percent": 101}, {"abort_percent": -1},
                                 {"delay_s": -0.1}, {"abort_code": 17}])
def test_a_bad_fault_is_refused(bad):
    with pytest.raises(ValueError):
        r.Fault(**bad)


def test_rds_moves_the_route_out_of_the_listener():
    res = r.build(snap(rec("greeter.1")), r.Options(rds=True))
    hcm = manager(res[r.LISTENER]["greeter"])
    assert hcm.rds.route_config_name == "greeter" and hcm.rds.config_source.HasField("ads")
    assert res[r.ROUTE]["greeter"].virtual_hosts[0].routes[0].route.cluster == "greeter"


def route_of(res, service: str = "greeter"):
    return manager(res[r.LISTENER][service]).route_config.virtual_hosts[0].routes[0].route


def test_the_same_fault_on_every_routed_instance_is_one_listener_filter():
    fault = r.Fault(abort_code=14, abort_percent=50)
    res = r.build(snap(rec("greeter.1", fault=fault), rec("greeter.2", fault=fault),
                       rec("greeter.3", state=State.STOPPED)))
    assert route_of(res).cluster == "greeter" and set(res[r.CLUSTER]) == {"greeter"}
    assert manager(res[r.LISTENER]["greeter"]).http_filters[0].name == r.FAULT_FILTER


def test_a_fault_on_one_instance_splits_the_route_by_weight():
    fault = r.Fault(delay_s=0.2, delay_percent=100)
    res = r.build(snap(rec("greeter.1", weight=3), rec("greeter.2", fault=fault),
                       rec("greeter.3"), rec("greeter.4", state=State.DRAINING)))
    clusters = route_of(res).weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in clusters] == [("greeter", 4), ("greeter/greeter.2", 1)]
    override = fault_pb2.HTTPFault()
    assert clusters[1].typed_per_filter_config[r.FAULT_FILTER].Unpack(override)
    assert override.delay.fixed_delay.ToMilliseconds() == 200
    assert not clusters[0].typed_per_filter_config
    # The listener's filter does nothing by itself: only the override delays.
    base = fault_pb2.HTTPFault()
    assert manager(res[r.LISTENER]["greeter"]).http_filters[0].typed_config.Unpack(base)
    assert not base.HasField("delay") and not base.HasField("abort")
    assert set(res[r.CLUSTER]) == {"greeter", "greeter/greeter.2"}
    assert {e.lb_endpoints[0].endpoint.hostname for e in res[r.ENDPOINT]["greeter"].endpoints} \
        == {"greeter.1", "greeter.3", "greeter.4"}  # draining stays in the main cluster
    # Stopped, the faulty instance leaves the split and is UNHEALTHY in the main cluster.
    res = r.build(snap(rec("greeter.1"), rec("greeter.2", fault=fault, state=State.STOPPED)))
    assert route_of(res).cluster == "greeter"
    assert manager(res[r.LISTENER]["greeter"]).http_filters[0].name != r.FAULT_FILTER
