"""The supervisor serves xDS (issue 27): `up` starts an ADS server that follows the
registry and writes a bootstrap file; `devcluster xds` and `Cluster.xds()` say how to
point a client at it; an unmodified grpcio client dialling ``xds:///greeter`` follows
weights and stops; `down` removes the bootstrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.api import Cluster
from devcluster.errors import NoClusterError
from devcluster.statedir import layout
from tests._servers import ROOT

CLIENT = ROOT / "tests" / "xds" / "_xds_client.py"
GREETER = "python -m devcluster.greeter --port $PORT"
Cli = Callable[..., subprocess.CompletedProcess[str]]


class XdsClient:
    """tests/xds/_xds_client.py in a subprocess: JSON commands in, JSON answers out."""

    def __init__(self, bootstrap: str, log: Path) -> None:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": bootstrap, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(CLIENT), "xds:///greeter"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline() or '{"ready": false}')["ready"]

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the xDS client exited with {self.proc.poll()}"
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def xds_client(tmp_path: Path) -> Iterator[Callable[[str], XdsClient]]:
    made: list[XdsClient] = []

    def make(bootstrap: str) -> XdsClient:
        made.append(XdsClient(bootstrap, tmp_path / f"xds-client-{len(made)}.log"))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_any_grpc_client_follows_the_cluster_over_xds(
        make_cluster: Callable[..., Cluster], run_cli: Cli,
        xds_client: Callable[[str], XdsClient]) -> None:
    cluster = make_cluster([f"greeter: {GREETER}"], scale={"greeter": 3})
    setup = cluster.xds()
    assert setup.listeners == ("greeter",)
    assert Path(setup.bootstrap) == layout(cluster.state_dir.absolute()).xds_bootstrap
    assert Path(setup.bootstrap).parent.name == "private"  # the user's own 0700 dir
    assert json.loads(Path(setup.bootstrap).read_text())["xds_servers"][0]["server_uri"] \
        == setup.server_uri
    shown = run_cli("xds", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == setup.to_dict()
    text = run_cli("xds").stdout
    assert f"export GRPC_XDS_BOOTSTRAP={setup.bootstrap}\n" in text

    # Weights: 5,1,1 gives about 5/7 of the calls to greeter.1.
    cluster.registry.update("greeter.1", weight=5)
    client = xds_client(setup.bootstrap)
    client.ask(op="start")
    client.ask(op="await", present="greeter.1", since=time.time(), timeout=10)
    client.ask(op="stop")
    out = client.ask(op="count", n=700)
    assert out["errors"] == {}
    assert abs(out["counts"]["greeter.1"] / out["calls"] - 5 / 7) < 0.06, out

    # A stop takes an instance out of rotation with no failed call.
    client.ask(op="start", threads=4)
    cluster.stop("greeter.2")
    began = time.time()
    assert "ms" in client.ask(op="await", absent="greeter.2", since=began, k=50, timeout=10)
    out = client.ask(op="stop")
    assert out["errors"] == {}, out

    cluster.down()
    assert not Path(setup.bootstrap).exists(), "down leaves no bootstrap behind"
    with pytest.raises(NoClusterError, match="no cluster serves xDS"):
        cluster.xds()
    gone = run_cli("xds")
    assert gone.returncode == 1 and "no cluster serves xDS" in gone.stderr
