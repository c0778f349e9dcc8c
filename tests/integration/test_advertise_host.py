"""``$DEVCLUSTER_ADVERTISE_HOST``: the host part of every registered address (issue 26).

Other machines sharing an etcd registry cannot dial 127.0.0.1; the supervisor registers
this machine's address instead. 127.0.0.2 stands in for it here (it is loopback too, so
the test needs no network set-up); the network-namespace partition test
(tests/reliability/test_partition.py) uses real per-host addresses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from tests.conftest import cli_env

Cli = Callable[..., CompletedProcess[str]]
SERVE_ALL = f"greeter: {sys.executable} -m devcluster.greeter --port $PORT --host 0.0.0.0\n"


def test_the_registered_address_has_the_advertised_host(tmp_path: Path, run_cli: Cli,
                                                         say_hello: Any) -> None:
    (tmp_path / "Procfile").write_text(SERVE_ALL)
    env = cli_env(DEVCLUSTER_ADVERTISE_HOST="127.0.0.2")
    up = run_cli("up", "-d", "-p", "0", "-c", "greeter=2", "--grace", "1", env=env)
    try:
        assert up.returncode == 0, up.stderr
        rows = json.loads(run_cli("ps", "--json").stdout)
        assert [r["address"].rpartition(":")[0] for r in rows] == ["127.0.0.2", "127.0.0.2"]
        registry = json.loads((tmp_path / ".devcluster" / "registry.json").read_text())
        assert {r["address"] for r in registry["instances"].values()} == {
            r["address"] for r in rows}
        for row in rows:  # the registered address answers
            assert say_hello(row["address"])[1] == row["name"]
    finally:
        assert run_cli("down").returncode == 0


def test_a_bad_advertised_host_is_refused_in_one_line(tmp_path: Path, run_cli: Cli) -> None:
    (tmp_path / "Procfile").write_text(SERVE_ALL)
    up = run_cli("up", "-d", "-p", "0", env=cli_env(DEVCLUSTER_ADVERTISE_HOST="10.0.0.5/24"))
    assert up.returncode == 2
    assert up.stderr.strip().splitlines() == [
        "devcluster: error: $DEVCLUSTER_ADVERTISE_HOST is '10.0.0.5/24', not a host name or "
        "IP address; set it to this machine's address as others reach it, e.g. 10.0.0.5"]
    assert "Traceback" not in up.stdout + up.stderr
