"""An unmodified grpc-js client (@grpc/grpc-js-xds) of ``xds:///greeter`` follows the registry:
examples/node-xds-client/client.js, run with ``GRPC_XDS_BOOTSTRAP`` pointing at our server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests._servers import ROOT, wait_for

EXAMPLE = ROOT / "examples" / "node-xds-client"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs npm): "
                                            "the grpc-js xDS client cannot run"),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``npm ci`` once, when the example's node_modules is missing."""
    modules = EXAMPLE / "node_modules"
    if not (modules / "@grpc" / "grpc-js-xds").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"node is installed but npm is not: install npm to set up {EXAMPLE} (npm ci)")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"npm ci failed in {EXAMPLE}:\n{done.stdout}{done.stderr}"
    return modules


def node_client(bootstrap: Path, n: int) -> subprocess.Popen[str]:
    assert NODE is not None
    return subprocess.Popen([NODE, str(EXAMPLE / "client.js"), "xds:///greeter", str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)})


def result(proc: subprocess.Popen[str]) -> dict[str, object]:
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"node client failed ({proc.returncode}): {err}"
    parsed: dict[str, object] = json.loads(out)
    return parsed


def test_node_client_weights_5_1_1(node_modules, greeters, bootstrap):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    greeters.registry.update("greeter.1", weight=5)
    out = result(node_client(bootstrap, 1400))
    assert out["errors"] == {}
    counts = out["counts"]
    assert isinstance(counts, dict)
    shares = {name: n / 1400 for name, n in counts.items()}
    print("node shares", shares)
    assert abs(shares["greeter.1"] - 5 / 7) < 0.05
    assert abs(shares["greeter.2"] - 1 / 7) < 0.04
    assert abs(shares["greeter.3"] - 1 / 7) < 0.04


def test_node_client_drain_mid_run_loses_no_call(node_modules, greeters, bootstrap, tmp_path):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    log = tmp_path / "logs" / "greeter.2.log"

    def received() -> int:
        return log.read_text().count("Received:") if log.exists() else 0

    proc = node_client(bootstrap, 1500)
    try:
        wait_for(lambda: received() >= 20 or proc.poll() is not None, 30, "the node client's calls")
        assert proc.poll() is None, "the node client finished before the drain"
        greeters.registry.update("greeter.2", state="draining")
        # Once the drain reached the client greeter.2 gets no call: its count stops growing
        # (an absence shows only over a window: 0.5 s without a call, while others get ~80).
        last = [received(), time.monotonic()]

        def settled() -> bool:
            n = received()
            if n != last[0]:
                last[:] = [n, time.monotonic()]
            return proc.poll() is not None or time.monotonic() - last[1] > 0.5

        wait_for(settled, 30, "greeter.2 to stop getting calls")
        greeters.kill("greeter.2", state="stopped")
    finally:
        out = result(proc)
    print("node drain", out)
    assert out["errors"] == {}
    counts = out["counts"]
    assert isinstance(counts, dict) and counts["greeter.2"] < 400  # a third would be 500
