"""``devcluster client --xds``: the same lines and summary as ``devcluster client``, the
calls made by grpc's own xDS client on ``xds:///greeter`` of a real cluster."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Callable

import pytest

from devcluster.api import Cluster

GREETER = "python -m devcluster.greeter --port $PORT"
Cli = Callable[..., subprocess.CompletedProcess[str]]
LINE = re.compile(r"^\s*(\d+)\s+(greeter\.\d)\s+(127\.0\.0\.1:\d+)\s+[\d.]+ ms\s+"
                  r"Hello world-\1 from \2$")


def test_client_xds_names_the_instance_of_each_call_and_follows_the_weights(
        make_cluster: Callable[..., Cluster], run_cli: Cli) -> None:
    cluster = make_cluster([f"greeter: {GREETER}"], scale={"greeter": 3})
    cluster.weight("greeter.1", 5)
    cluster.weight("greeter.3", 0)  # not routed: no call of 30 may reach it
    addresses = {i.name: i.address for i in cluster.ps()}

    done = run_cli("client", "--xds", "-n", "30", "--interval", "0")
    assert done.returncode == 0, done.stderr
    lines = [m for m in map(LINE.match, done.stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == list(range(1, 31)), done.stdout
    assert all(addresses[m.group(2)] == m.group(3) for m in lines), done.stdout
    served = Counter(m.group(2) for m in lines)
    print(f"client --xds at weights 5:1:0, 30 calls: {dict(served)}")
    assert set(served) <= {"greeter.1", "greeter.2"} and served["greeter.1"] > served["greeter.2"]
    assert "30 calls, 0 failed" in done.stdout
    # The summary's weight share is what xDS routes by: the registry's usable weights.
    row = next(line for line in done.stdout.splitlines() if line.startswith("greeter.1 "))
    assert "83.3%" in row, done.stdout

    summary = json.loads(run_cli("client", "--xds", "-n", "300", "--interval", "0", "--json",
                                 "-C", "4").stdout.splitlines()[-1])["summary"]
    share = summary["instances"]["greeter.1"]["share"]
    print(f"client --xds -C 4, 300 calls: greeter.1 served {share:.3f} (5/6 = 0.833)")
    assert summary["failures"] == 0 and abs(share - 5 / 6) < 0.07, summary
    assert "greeter.3" not in summary["instances"]


@pytest.mark.parametrize("flag", [["--policy", "round_robin"], ["--hedge", "0.1"],
                                  ["--where", "zone=b"], ["--target", "127.0.0.1:50051"]])
def test_client_xds_refuses_the_balancer_options_in_one_line(run_cli: Cli, flag: list[str]) -> None:
    done = run_cli("client", "--xds", *flag, "-n", "1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and flag[0] in done.stderr and "--xds" in done.stderr
    assert done.stdout == ""


def test_client_xds_without_a_running_cluster_says_how_to_start_one(
        make_cluster: Callable[..., Cluster], run_cli: Cli) -> None:
    cluster = make_cluster([f"greeter: {GREETER}"], scale={"greeter": 1})
    cluster.down()
    done = run_cli("client", "--xds", "-n", "1")
    assert done.returncode == 1 and "no cluster serves xDS" in done.stderr, done.stderr
