"""The etcd backend under a network partition: the first multi-machine fault test (issue 26).

Four "hosts" in network namespaces on one switch (tests/_netns.py)::

    h1  etcd member 1, supervisor A (server1, server2)   10.77.0.1
    h2  etcd member 2, the client                        10.77.0.2
    h3  etcd member 3                                    10.77.0.3
    h4  supervisor B (server3, server4)                  10.77.0.4

Each supervisor registers ``$DEVCLUSTER_ADVERTISE_HOST:port`` (its host's address) into
the 3-member etcd with the default lease (TTL 10 s). The client (tests/_partition_client.py)
calls back to back with hedging (a call to a cut host hangs instead of failing). Then h4's
cable is pulled for a while and plugged back in. What must hold:

- B's instances leave the registry, so every client's rotation, within the lease TTL;
- the client, on the majority side, sees no failed call, before, during or after;
- after the heal B registers again: each instance once, on one fresh lease, no key left
  of the old one, and the client calls B's instances again.

The figures (time to leave the registry, time until the client stops sending to B,
failed calls, rejoin time) are printed, and listed in docs/etcd.md ("Past one machine").
Runs as root only (CI runs it as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.registry.etcd import DEFAULT_LEASE_TTL_S
from tests import _netns
from tests._etcd import etcd_binary, require_etcd
from tests._netns import Host, Network, stop
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "_partition_client.py"
PREFIX = "/partition"
A_NAMES, B_NAMES = ["server1", "server2"], ["server3", "server4"]
TTL = DEFAULT_LEASE_TTL_S
#: Calls the client makes to A alone after B left the registry, before h4 is plugged back.
CALLS_BEFORE_HEAL = 30
#: B's keep-alive tries again every 0.5 s while etcd is unreachable: it registers again
#: about a second after the heal (the bound leaves room for a loaded CI machine).
REJOIN_WITHIN_S = 5.0

Wait = Callable[..., Any]


def _etcd(net: Network, host: Host, members: list[Host], workdir: Path) -> None:
    cluster = ",".join(f"e{i + 1}=http://{h.address}:2380" for i, h in enumerate(members))
    name = f"e{members.index(host) + 1}"
    binary = etcd_binary()
    assert binary is not None
    net.popen(host, [
        binary, "--name", name, "--data-dir", str(workdir / f"{name}.data"),
        "--listen-client-urls", f"http://{host.address}:2379",
        "--advertise-client-urls", f"http://{host.address}:2379",
        "--listen-peer-urls", f"http://{host.address}:2380",
        "--initial-advertise-peer-urls", f"http://{host.address}:2380",
        "--initial-cluster", cluster, "--initial-cluster-state", "new",
        "--initial-cluster-token", "partition", "--log-level", "warn",
    ], workdir / f"{name}.log")


def _wait_etcd_healthy(net: Network, host: Host, members: list[Host]) -> None:
    """Every member answers /health (a leader elected), polled from inside ``host``."""
    urls = [f"http://{m.address}:2379/health" for m in members]
    script = (
        "import sys, time, urllib.request\n"
        f"urls, end = {urls!r}, time.monotonic() + 20\n"
        "def ok(u):\n"
        "    try:\n"
        "        return b'\"true\"' in urllib.request.urlopen(u, timeout=0.5).read()\n"
        "    except OSError:\n"
        "        return False\n"
        "while not all(ok(u) for u in urls):\n"
        "    if time.monotonic() > end: sys.exit('etcd not healthy within 20 s')\n"
        "    time.sleep(0.05)\n")
    done = net.run(host, [sys.executable, "-c", script], timeout=30)
    assert done.returncode == 0, done.stderr


def _supervisor(net: Network, host: Host, names: list[str], etcd: Host,
                directory: Path) -> Any:
    directory.mkdir()
    (directory / "Procfile").write_text("".join(
        f"{n}: {sys.executable} -m devcluster.greeter --port $PORT --host 0.0.0.0\n"
        for n in names))
    env = cli_env(DEVCLUSTER_ADVERTISE_HOST=host.address)
    return net.popen(host, [
        sys.executable, "-m", "devcluster", "-f", str(directory / "Procfile"), "up",
        "-p", "0", "--grace", "1", "--registry", f"etcd://{etcd.address}:2379{PREFIX}",
    ], directory / "up.out", env=env, cwd=directory)


class Seen:
    """The client's latest JSON report (see tests/_partition_client.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"calls": [], "views": [], "channel": [], "keys": []}

    def read(self) -> Seen:
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
        return self

    def view(self) -> set[str]:
        views = self.data["views"]
        return set(views[-1][1]) if views else set()

    def calls_to(self, names: list[str], since: float) -> int:
        return sum(1 for c in self.data["calls"] if c[1] > since and c[2] in names and c[3])


def test_a_cut_off_supervisor_leaves_within_the_ttl_and_rejoins_once(
        tmp_path: Path, wait_until: Wait) -> None:
    reason = _netns.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    require_etcd()
    with Network("dcpart") as net:
        hosts = [net.add_host() for _ in range(4)]
        members, h4 = hosts[:3], hosts[3]
        for host in members:
            _etcd(net, host, members, tmp_path)
        _wait_etcd_healthy(net, members[1], members)
        sup_a = _supervisor(net, members[0], A_NAMES, members[0], tmp_path / "a")
        sup_b = _supervisor(net, h4, B_NAMES, members[2], tmp_path / "b")
        out, stop_file = tmp_path / "client.json", tmp_path / "client.stop"
        client = net.popen(members[1], [
            sys.executable, str(CLIENT), f"etcd://{members[1].address}:2379{PREFIX}",
            "server", str(out), str(stop_file)], tmp_path / "client.log", env=cli_env())
        seen = Seen(out)
        try:
            figures = _partition(net, h4, seen, wait_until, (sup_a, sup_b, client))
            stop_file.touch()
            assert client.wait(15) == 0, (tmp_path / "client.log").read_text()
            seen.read()
        finally:
            for proc in (client, sup_a, sup_b):
                stop(proc, signal.SIGINT, 15)
            for proc in net.procs:
                stop(proc)
        _check(seen, figures, tmp_path)


def _partition(net: Network, h4: Host, seen: Seen, wait_until: Wait,
               procs: tuple[Any, ...]) -> dict[str, float]:
    def alive() -> None:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args} exited ({proc.returncode})"

    def serving_everywhere() -> bool:
        alive()
        seen.read()
        return seen.view() == set(A_NAMES + B_NAMES) and len(seen.data["keys"] or ()) == 4 \
            and all(seen.calls_to([n], 0) for n in A_NAMES + B_NAMES)

    wait_until(serving_everywhere, timeout=60, what="4 instances registered and answering")
    keys_before = seen.data["keys"]
    cut = time.monotonic()
    net.cut(h4)

    def b_left() -> bool:
        alive()
        return not seen.read().view() & set(B_NAMES)

    wait_until(b_left, timeout=TTL + 10, what="B's instances to leave the registry")
    left = next(t for t, names in seen.data["views"] if t > cut and not set(names) & set(B_NAMES))
    wait_until(lambda: seen.read().calls_to(A_NAMES, left) >= CALLS_BEFORE_HEAL, timeout=20,
               what=f"{CALLS_BEFORE_HEAL} calls to A alone before the heal")
    heal = time.monotonic()
    net.heal(h4)

    def b_back() -> bool:
        alive()
        return seen.read().view() == set(A_NAMES + B_NAMES) and all(
            seen.calls_to([n], heal) for n in B_NAMES)

    wait_until(b_back, timeout=TTL + 10, what="B's instances to register and answer again")
    back = next(t for t, names in seen.data["views"] if t > heal and set(B_NAMES) <= set(names))
    settled = len(seen.data["calls"])
    wait_until(lambda: len(seen.read().data["calls"]) >= settled + 20, timeout=20,
               what="20 more calls after the rejoin")
    return {"cut": cut, "left": left, "heal": heal, "back": back, "keys_before": keys_before}


def _check(seen: Seen, f: dict[str, Any], tmp_path: Path) -> None:
    calls = seen.data["calls"]
    cut, heal = f["cut"], f["heal"]
    to_b = [c for c in calls if c[0] >= cut and c[1] <= heal
            and (c[2] in B_NAMES or set(c[4]) & set(B_NAMES))]
    last_to_b = max((c[0] for c in to_b), default=cut)
    failed = [c for c in calls if not c[3]]
    figures = {
        "b_left_registry_s": round(f["left"] - cut, 2),
        "client_stopped_sending_to_b_s": round(last_to_b - cut, 2),
        "failed_calls": len(failed), "calls": len(calls),
        "rejoin_s": round(f["back"] - heal, 2),
    }
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    print(f"\npartition figures: {json.dumps(figures)}")
    assert not failed, f"{len(failed)} failed calls of {len(calls)}: {failed[:5]}"
    # The lease TTL after the last keep-alive, which came before the cut; the slack is
    # etcd's expiry tick (0.5 s) plus the revoke and the watch event on a loaded machine.
    assert f["left"] - cut <= TTL + 1.0, figures
    assert last_to_b - cut < f["left"] - cut, figures  # hedging ejected B before the lease
    # A never left the registry once up, and the client kept calling A meanwhile.
    views = [set(names) for _t, names in seen.data["views"]]
    first = views.index(set(A_NAMES + B_NAMES))
    assert all(set(A_NAMES) <= names for names in views[first:]), views
    assert sum(1 for c in calls if cut < c[0] < heal) >= 50, figures
    assert f["back"] - heal <= REJOIN_WITHIN_S, figures
    # After the heal: every instance once, B's on one fresh lease, nothing of the old one.
    keys, before = seen.data["keys"], f["keys_before"]
    assert keys is not None, "etcd did not answer the client's last read of the keys"
    names = [key.rpartition("/")[2] for key, _lease in keys]
    assert sorted(names) == sorted(A_NAMES + B_NAMES), keys
    lease = {key.rpartition("/")[2]: lease for key, lease in keys}
    old = {key.rpartition("/")[2]: lease for key, lease in before}
    assert lease["server3"] == lease["server4"] != old["server3"], (before, keys)
    assert lease["server1"] == old["server1"]  # A's lease lived on throughout
    assert old["server3"] not in lease.values()
    assert seen.data["channel"] == sorted(A_NAMES + B_NAMES)
