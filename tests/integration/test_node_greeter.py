"""A service that is not Python: the grpc-js Greeter of examples/node-greeter beside Python
greeters in one cluster, balanced over by one BalancedChannel, every call attributed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client import BalancedChannel, served_by

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-greeter"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install "
                                                     "nodejs npm): the Node greeter cannot run")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``npm ci`` once, when the example's node_modules is missing."""
    modules = EXAMPLE / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: install npm to set up "
                        f"{EXAMPLE} (npm ci)")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"npm ci failed in {EXAMPLE}:\n{done.stdout}{done.stderr}"
    return modules


def test_node_and_python_greeters_balanced_and_attributed(
        node_modules: Path, make_cluster: Callable[..., Any]) -> None:
    cluster = make_cluster((f"node: {NODE} {EXAMPLE / 'server.js'}",
                            f"py: {sys.executable} -m devcluster.greeter --port $PORT"),
                           scale={"node": 2, "py": 2})
    names = {"node.1", "node.2", "py.1", "py.2"}
    assert {i.name for i in cluster.instances if i.state == "serving"} == names
    seen: Counter[str] = Counter()
    with BalancedChannel(None, cluster.state_dir) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for n in range(40):
            reply, call = stub.SayHello.with_call(helloworld_pb2.HelloRequest(name=f"n{n}"),
                                                  timeout=5)
            instance = served_by(call)
            assert reply.message == f"Hello n{n} from {instance}"
            seen[instance or "?"] += 1
    assert seen == {name: 10 for name in names}  # smooth WRR, equal weights: exact shares
    cluster.down()
    for name in ("node.1", "node.2"):  # drained on SIGINT, not killed
        assert any("stopped" in line for line in cluster.logs(name)), cluster.logs(name)


def test_devcluster_call_reaches_the_node_greeter_by_reflection(
        node_modules: Path, make_cluster: Callable[..., Any],
        devcluster_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    import json

    cluster = make_cluster((f"node: {NODE} {EXAMPLE / 'server.js'}",), scale={"node": 2})
    done = devcluster_cli("call", "helloworld.Greeter/SayHello", "-d", '{"name": "js"}',
                          "-n", "4", "--json", cwd=cluster.procfile.parent)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["instance"] for line in lines] == ["node.1", "node.2"] * 2
    assert all(line["reply"] == {"message": f"Hello js from {line['instance']}"}
               for line in lines)
