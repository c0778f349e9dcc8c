"""``devcluster client --policy`` and ``--target``, end to end through the CLI.

The article's policies (pick_first, round_robin) and its static resolver, on real
greeter processes: over the registry of a real cluster, over a ``static:///`` list
with no cluster at all, and over grpc's own resolver and balancer (``ipv4:``).
Every client is the real CLI in a subprocess; its ``--json`` lines say who served
each call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._servers import Greeters, dead_address, greeters_fixture

SERVERS = tuple(f"server{i}: python -m devcluster.greeter --port $PORT" for i in (1, 2, 3))
NAMES = ("server1", "server2", "server3")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEVCLUSTER_HOME"}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


def parse(stdout: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``--json`` output: the per-call objects and the summary."""
    objects = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert objects and "summary" in objects[-1], stdout
    return objects[:-1], objects[-1]["summary"]


def served(calls: list[dict[str, Any]]) -> Counter[str]:
    return Counter(c["instance"] for c in calls if c["ok"])


@pytest.fixture
def greeters(tmp_path: Path) -> Iterator[Greeters]:
    yield from greeters_fixture(tmp_path)


@pytest.fixture
def three(greeters: Greeters) -> list[str]:
    """Three greeters (not registered anywhere); their addresses, server1 first."""
    return [g.address for g in greeters.start_many(*NAMES)]


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A directory with no Procfile and no state dir, to run the client in."""
    path = tmp_path / "empty"
    path.mkdir()
    return path


@pytest.fixture
def cluster(make_cluster: Callable[..., Any]) -> Any:
    return make_cluster(SERVERS)


class BackgroundClient:
    """``devcluster client --json`` running until SIGINT; its output in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.path = cwd / "client.jsonl"
        with open(self.path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devcluster", "client", "--json", *args], cwd=cwd,
                env=_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)

    def calls(self) -> list[dict[str, Any]]:
        lines = self.path.read_text().splitlines()
        # The last line may be half written.
        return [json.loads(ln) for ln in lines if ln.endswith("}") and '"seq"' in ln]

    def stop(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """SIGINT (Ctrl-C): the client prints its summary and exits 0."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=15)
        assert self.proc.returncode == 0, err
        return parse(self.path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., BackgroundClient]]:
    started: list[BackgroundClient] = []

    def start(*args: str) -> BackgroundClient:
        client = BackgroundClient(tmp_path, *args)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


# -- the registry: policies over a real cluster ------------------------------------------

def test_pick_first_takes_the_first_instance_and_fails_over_on_kill(
        cluster: Any, background: Callable[..., BackgroundClient],
        wait_until: Callable[..., Any]) -> None:
    client = background("--policy", "pick_first", "--interval", "0.01", "--timeout", "1")
    wait_until(lambda: len(client.calls()) >= 20, 20, "20 calls before the kill")
    at_kill = len(client.calls())
    cluster.kill("server1")
    killed = len(client.calls())  # the kill returns once the process is gone
    wait_until(lambda: len(client.calls()) >= killed + 15, 20, "15 calls after the kill")
    at_disable = len(client.calls())
    cluster.disable("server2")
    disabled = len(client.calls())
    wait_until(lambda: len(client.calls()) >= disabled + 15, 20, "15 calls after disable")
    calls, summary = client.stop()

    assert summary["failures"] == 0, [c for c in calls if not c["ok"]]
    before = calls[:at_kill]
    assert served(before) == {"server1": len(before)}          # 100% to the first
    # The kill lands while calls go on: server1 until it is gone, then only the next
    # instance in name order; a call caught by the kill moved on without failing.
    assert switched(calls[at_kill:at_disable], "server1", "server2")
    assert all(r[0] == "server1" for c in calls[at_kill:] for r in c["retried"])
    # disable (a registry write) moves pick_first on too, past the disabled server2.
    assert switched(calls[at_disable:], "server2", "server3")


def switched(calls: list[dict[str, Any]], old: str, new: str) -> bool:
    """True if ``calls`` went to ``old`` (maybe none), then to ``new`` only, and >= 10 of them."""
    names = [c["instance"] for c in calls]
    if new not in names:
        return False
    first = names.index(new)
    return set(names[:first]) <= {old} and set(names[first:]) == {new} and \
        len(names) - first >= 10


def test_round_robin_ignores_weights(cluster: Any, run_cli: Callable[..., Any]) -> None:
    assert run_cli("weight", "server1", "5").returncode == 0
    result = run_cli("client", "--policy", "round_robin", "-n", "30", "--interval", "0",
                     "--json")
    assert result.returncode == 0, result.stderr
    calls, summary = parse(result.stdout)
    assert served(calls) == dict.fromkeys(NAMES, 10)
    assert [c["instance"] for c in calls[:6]] == [*NAMES, *NAMES]
    server1 = summary["instances"]["server1"]
    assert (server1["share"], server1["weight_share"]) == (round(1 / 3, 4), round(5 / 7, 4))

    # The default policy, on the same registry, does follow the weights.
    result = run_cli("client", "-n", "14", "--interval", "0", "--json")
    calls, _ = parse(result.stdout)
    assert served(calls) == {"server1": 10, "server2": 2, "server3": 2}


# -- static:/// : a fixed list, no cluster ---------------------------------------------

def test_static_target_works_with_no_state_dir_at_all(
        three: list[str], empty_dir: Path, devcluster_cli: Callable[..., Any]) -> None:
    target = "static:///" + ",".join(three)
    result = devcluster_cli("client", "--target", target, "--policy", "round_robin",
                            "-n", "9", "--interval", "0", "--json", cwd=empty_dir)
    assert result.returncode == 0, result.stderr
    calls, summary = parse(result.stdout)
    assert served(calls) == dict.fromkeys(NAMES, 3)
    # Servers that send devcluster-instance are known by that name, at their address.
    assert {c["instance"]: c["address"] for c in calls} == dict(zip(NAMES, three, strict=True))
    assert {n: i["weight"] for n, i in summary["instances"].items()} == dict.fromkeys(NAMES, 1)
    assert list(empty_dir.iterdir()) == []       # no state dir, no file of any kind

    # pick_first takes the first address of the list (not the smallest): the last one here.
    reverse = "static:///" + ",".join(reversed(three))
    result = devcluster_cli("client", "--target", reverse, "--policy", "pick_first",
                            "-n", "5", "--interval", "0", "--json", cwd=empty_dir)
    calls, _ = parse(result.stdout)
    assert served(calls) == {"server3": 5}

    # Weighted (the default) over a static list: weight 1 each, even shares.
    result = devcluster_cli("client", "--target", target, "-n", "6", "--interval", "0",
                            "--json", cwd=empty_dir)
    calls, _ = parse(result.stdout)
    assert served(calls) == dict.fromkeys(NAMES, 2)


def test_static_target_skips_a_dead_address_named_by_its_address(
        three: list[str], empty_dir: Path, devcluster_cli: Callable[..., Any]) -> None:
    dead = dead_address()
    target = f"static:///{three[0]},{dead},{three[1]}"
    result = devcluster_cli("client", "--target", target, "--policy", "round_robin",
                            "-n", "10", "--interval", "0", "--json", cwd=empty_dir)
    assert result.returncode == 0, result.stderr
    calls, summary = parse(result.stdout)
    assert summary["failures"] == 0
    assert set(served(calls)) == {"server1", "server2"}
    # No server answered there: the instance is known by its address only.
    assert [r for c in calls for r in c["retried"]] == [[dead, "UNAVAILABLE"]]


def test_hedge_a_frozen_server_costs_no_call(
        greeters: Greeters, three: list[str], empty_dir: Path,
        devcluster_cli: Callable[..., Any]) -> None:
    greeters.freeze("server2")
    target = "static:///" + ",".join(three)
    result = devcluster_cli("client", "--target", target, "--hedge", "0.05", "--timeout", "1",
                            "-C", "4", "-n", "24", "--interval", "0", "--json", cwd=empty_dir)
    assert result.returncode == 0, result.stderr
    calls, summary = parse(result.stdout)
    assert summary["failures"] == 0 and served(calls)["server2"] == 0
    assert [three[1], "DEADLINE_EXCEEDED"] in [r for c in calls for r in c["retried"]]


# -- grpc's own resolver and balancer --------------------------------------------------

def test_ipv4_target_with_grpcs_round_robin_spreads_like_ours(
        three: list[str], empty_dir: Path, devcluster_cli: Callable[..., Any]) -> None:
    n = 60
    spreads: dict[str, Counter[str]] = {}
    order: dict[str, list[str]] = {}
    for target in ("ipv4:" + ",".join(three), "static:///" + ",".join(three)):
        result = devcluster_cli("client", "--target", target, "--policy", "round_robin",
                                "-n", str(n), "--interval", "0", "--json", cwd=empty_dir)
        assert result.returncode == 0, result.stderr
        calls, summary = parse(result.stdout)
        assert summary["failures"] == 0 and summary["calls"] == n
        spreads[target.split(":")[0]] = served(calls)
        order[target.split(":")[0]] = [c["instance"] for c in calls]
        if target.startswith("ipv4"):
            # grpc does not say which address served; the header says who.
            assert {c["address"] for c in calls} == {""}
            assert all(i["weight_share"] is None for i in summary["instances"].values())
    assert spreads["static"] == dict.fromkeys(NAMES, n // 3)
    # grpc's round_robin sends the first calls to the subchannels connected so far
    # (ours waits for no connection: it picks, then connects); once all three are
    # up it rotates exactly like ours: equal shares from then on.
    grpc_order = order["ipv4"]
    warm = next(i for i in range(len(grpc_order)) if set(grpc_order[:i + 1]) == set(NAMES))
    assert warm < n // 2, grpc_order
    steady = Counter(grpc_order[warm + 1:])
    assert max(steady.values()) - min(steady.values()) <= 1, grpc_order
    assert all(abs(spreads["ipv4"][name] - n // 3) <= 2 + warm for name in NAMES), spreads


def test_grpc_pick_first_and_a_single_address(
        three: list[str], empty_dir: Path, devcluster_cli: Callable[..., Any]) -> None:
    for target in ("ipv4:" + ",".join(three), three[0]):  # pick_first: grpc's default
        result = devcluster_cli("client", "--target", target, "-n", "5", "--interval", "0",
                                "--json", cwd=empty_dir)
        assert result.returncode == 0, result.stderr
        calls, _ = parse(result.stdout)
        assert served(calls) == {"server1": 5}


def test_the_comma_list_fails_with_grpcs_own_error(
        three: list[str], empty_dir: Path, devcluster_cli: Callable[..., Any]) -> None:
    listed = ",".join(three)
    result = devcluster_cli("client", "--target", listed, "-n", "2", "--interval", "0",
                            "--timeout", "2", "--json", cwd=empty_dir)
    assert result.returncode == 1
    calls, summary = parse(result.stdout)
    assert summary["failures"] == 2 and not served(calls)
    for call in calls:
        assert call["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert call["instance"] == "-"
    assert listed in calls[0]["message"]     # grpc tried to resolve the whole string
    note = result.stderr.strip().splitlines()
    assert len(note) == 1 and f"static:///{listed}" in note[0], result.stderr


# -- usage errors ------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "fragment"), [
    (["--target", "static:///"], "empty address"),
    (["--target", "static:///127.0.0.1"], "expected HOST:PORT"),
    (["--target", "static:///127.0.0.1:99999"], "ports are 1..65535"),
    (["--target", "static:///127.0.0.1:1,127.0.0.1:1"], "listed twice"),
    (["--target", "nacos:///localhost:8848/public"], "unknown target scheme 'nacos'"),
    (["--target", "ipv4:localhost:50051"], "not an ipv4 address"),
    (["--target", "dns:///"], "empty --target"),
    (["--policy", "random"], "unknown policy 'random'"),
    (["--target", "static:///127.0.0.1:1", "--policy", "random"], "unknown policy"),
    (["--target", "ipv4:127.0.0.1:1", "--policy", "weighted"], "no 'weighted' policy"),
    (["--target", "static:///127.0.0.1:1", "--service", "server"], "one or the other"),
    (["--target", "static:///127.0.0.1:1", "--hedge", "0"], "--hedge must be > 0"),
    (["--target", "ipv4:127.0.0.1:1", "--hedge", "0.1"], "--hedge needs devcluster's"),
])
def test_bad_target_or_policy_is_one_line_exit_2(
        args: list[str], fragment: str, empty_dir: Path,
        devcluster_cli: Callable[..., Any]) -> None:
    result = devcluster_cli("client", *args, "-n", "1", cwd=empty_dir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devcluster: error:"), result.stderr
    assert fragment in lines[0]
    assert result.stdout == ""
    assert list(empty_dir.iterdir()) == []
