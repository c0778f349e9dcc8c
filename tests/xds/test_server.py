"""The ADS server on the wire, driven by a raw ADS stub (no xDS client in between)."""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from devcluster.registry.record import Record, State
from devcluster.xds import resources as r
from devcluster.xds.bootstrap import bootstrap, write_bootstrap
from devcluster.xds.server import serve_in_thread
from tests._servers import MemoryRegistry

TIMEOUT = 10.0


class Ads:
    """One ADS stream: ``send`` requests, ``recv`` responses (with a deadline)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.out: queue.Queue[object] = queue.Queue()
        self.responses: queue.Queue[object] = queue.Queue()
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            self.channel).StreamAggregatedResources(self._requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[object]:
        while (item := self.out.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError:
            pass

    def send(self, type_url: str, *names: str, version: str = "", nonce: str = "",
             error: str | None = None) -> None:
        request = discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="test"), type_url=type_url, resource_names=names,
            version_info=version, response_nonce=nonce)
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.out.put(request)

    def recv(self, timeout: float = TIMEOUT):
        return self.responses.get(timeout=timeout)

    def quiet(self, timeout: float = 0.3) -> bool:
        """True if nothing arrives for ``timeout`` s: the only way to see a non-event."""
        try:
            self.responses.get(timeout=timeout)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()
        self.channel.close()


def serving(name: str, port: int, **fields) -> Record:
    return Record(name, "greeter", f"127.0.0.1:{port}", state=State.SERVING, pid=port, **fields)


def test_push_on_change_ack_and_nack_logged_once(caplog):
    registry = MemoryRegistry([serving("greeter.1", 5001)])
    caplog.set_level(logging.WARNING, logger="devcluster.xds.server")
    with serve_in_thread(registry) as xds:
        a, b = Ads(xds.port), Ads(xds.port)
        try:
            a.send(r.ENDPOINT, "greeter")
            first = a.recv()
            assert first.type_url == r.ENDPOINT and len(first.resources) == 1
            a.send(r.ENDPOINT, "greeter", version=first.version_info, nonce=first.nonce)
            registry.update("greeter.1", weight=3)
            pushed = a.recv()
            assert int(pushed.version_info) == int(first.version_info) + 1
            # Both clients NACK the same version: one warning, and no resend.
            b.send(r.ENDPOINT, "greeter")
            got = b.recv()
            assert got.version_info == pushed.version_info
            a.send(r.ENDPOINT, "greeter", version=first.version_info, nonce=pushed.nonce,
                   error="weights too heavy")
            b.send(r.ENDPOINT, "greeter", nonce=got.nonce, error="weights too heavy")
            assert a.quiet() and b.quiet()
            nacks = [m for m in caplog.messages if "rejected" in m]
            assert len(nacks) == 1 and "weights too heavy" in nacks[0], caplog.messages
            # A registry write that changes nothing served (an updated_at) pushes nothing.
            registry.update("greeter.1", weight=3)
            assert a.quiet()
            # The next real change goes out as a new version.
            registry.register(serving("greeter.2", 5002))
            assert int(a.recv().version_info) == int(pushed.version_info) + 1
        finally:
            a.close()
            b.close()


def test_listener_request_for_an_unknown_service_is_answered_empty():
    with serve_in_thread(MemoryRegistry([serving("greeter.1", 5001)])) as xds:
        ads = Ads(xds.port)
        try:
            ads.send(r.LISTENER, "nope")
            assert len(ads.recv().resources) == 0  # LDS: absent means does-not-exist
        finally:
            ads.close()


def test_bootstrap(tmp_path):
    doc = bootstrap(4242)
    (server,) = doc["xds_servers"]
    assert server == {"server_uri": "127.0.0.1:4242", "channel_creds": [{"type": "insecure"}],
                      "server_features": ["xds_v3"]}
    assert doc["node"]["id"]
    path = write_bootstrap(tmp_path / "b.json", 4242, node_id="me")
    assert json.loads(path.read_text())["node"]["id"] == "me"
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_importing_the_package_loads_no_envoy_protos():
    code = ("import sys, devcluster.xds, devcluster.xds.bootstrap; "
            "print(any(m.startswith('envoy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serve_follows_the_etcd_backend_too(tmp_path):
    from devcluster.registry import open_registry
    from tests._etcd import require_etcd, running_etcd

    require_etcd()
    with running_etcd(tmp_path / "etcd") as etcd:
        registry = open_registry(etcd.url("/xds-test"))
        try:
            registry.register(serving("greeter.1", 5001))
            with serve_in_thread(registry) as xds:
                ads = Ads(xds.port)
                try:
                    ads.send(r.ENDPOINT, "greeter")
                    first = ads.recv()
                    assert len(first.resources) == 1
                    ads.send(r.ENDPOINT, "greeter", version=first.version_info, nonce=first.nonce)
                    registry.update("greeter.1", state="draining")
                    pushed = ads.recv()
                    cla = r.endpoint_pb2.ClusterLoadAssignment()
                    assert pushed.resources[0].Unpack(cla)
                    assert cla.endpoints[0].lb_endpoints[0].health_status == r.DRAINING
                finally:
                    ads.close()
        finally:
            registry.close()


def test_python_m_devcluster_xds_serves_a_state_dir_until_sigint(tmp_path):
    import signal

    from devcluster.registry.file import FileRegistry
    from tests._servers import ROOT, wait_for

    state_dir = tmp_path / ".devcluster"
    FileRegistry(state_dir).register(serving("greeter.1", 5001))
    boot = tmp_path / "bootstrap.json"
    proc = subprocess.Popen([sys.executable, "-m", "devcluster.xds", "--state-dir", str(state_dir),
                             "--bootstrap", str(boot)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: boot.exists() or proc.poll() is not None, 20, "the bootstrap file")
        port = int(json.loads(boot.read_text())["xds_servers"][0]["server_uri"].rsplit(":", 1)[1])
        ads = Ads(port)
        try:
            ads.send(r.LISTENER, "greeter")
            assert [a.type_url for a in ads.recv().resources] == [r.LISTENER]
        finally:
            ads.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_update_and_set_options_each_keep_the_others_value():
    from devcluster.registry.record import Snapshot
    from devcluster.xds.server import XdsServer

    xds = XdsServer()
    xds.set_options(r.Options(faults={"greeter": r.Fault(abort_code=14, abort_percent=5)}))
    assert xds.versions()["Listener"] == "0"  # nothing to serve before a snapshot
    xds.update(Snapshot(1, {"greeter.1": serving("greeter.1", 5001)}))
    (packed,) = xds.cache.get(r.LISTENER, {"greeter"})
    assert b"envoy.filters.http.fault" in packed.value  # the fault survived the update
    xds.update(Snapshot(2, {"greeter.1": serving("greeter.1", 5001, weight=2)}))
    assert xds.versions() == {"Listener": "1", "RouteConfiguration": "0", "Cluster": "1",
                              "ClusterLoadAssignment": "2"}


def test_the_server_stops_following_the_registry_once_until_is_set():
    """A supervisor's whole-cluster shutdown: its writes are not rebuilt and pushed."""
    import asyncio
    import time

    from devcluster.xds.server import serve

    registry = MemoryRegistry([serving("greeter.1", 5001)])

    async def main() -> None:
        until = asyncio.Event()
        async with serve(registry, until=until) as xds:

            async def endpoints_become(version: str, within: float = TIMEOUT) -> bool:
                deadline = time.monotonic() + within
                while time.monotonic() < deadline:
                    if xds.versions()["ClusterLoadAssignment"] == version:
                        return True
                    await asyncio.sleep(0.01)  # the watch thread hands over on the loop
                return False

            first = xds.versions()["ClusterLoadAssignment"]
            registry.update("greeter.1", weight=3)
            assert await endpoints_become(str(int(first) + 1))
            until.set()
            await asyncio.sleep(0)  # the callback that ends the watch runs
            registry.update("greeter.1", weight=4)
            registry.update("greeter.1", weight=5)
            # A non-event: nothing to wait on but time (the first update took milliseconds).
            assert not await endpoints_become(str(int(first) + 2), 0.3), "still following"

    asyncio.run(main())
