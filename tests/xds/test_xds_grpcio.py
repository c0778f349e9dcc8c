"""Unmodified grpcio clients of ``xds:///greeter`` follow the registry through our ADS server.

Real greeter processes registered in a FileRegistry, the ADS server in this process (a
thread), and each client in a subprocess with ``GRPC_XDS_BOOTSTRAP`` in its environment.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(90)


def test_weights_5_1_1_give_shares_of_5_7_and_1_7(greeters, make_client):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    greeters.registry.update("greeter.1", weight=5)
    client = make_client()
    # The client may have started before the weight reached it: wait until it has.
    client.ask(op="start")
    client.ask(op="await", present="greeter.1", since=time.time(), timeout=10)
    client.ask(op="stop")
    out = client.ask(op="count", n=1400)
    assert out["errors"] == {}
    shares = {name: n / out["calls"] for name, n in out["counts"].items()}
    print("shares", shares)
    assert abs(shares["greeter.1"] - 5 / 7) < 0.05
    assert abs(shares["greeter.2"] - 1 / 7) < 0.04
    assert abs(shares["greeter.3"] - 1 / 7) < 0.04
