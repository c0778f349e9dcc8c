"""devcluster.toml in a running cluster (issue 17): probes, depends_on, metadata, flags.

The issue's done-when test is the first one: a gRPC service whose *named* health
service turns SERVING only after a delay, and an HTTP service that depends on it,
from one Procfile and one devcluster.toml; ``up -d`` returns when both are ready and
the HTTP service started only after the gRPC one served.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import psutil
import pytest

from devcluster.api import Cluster
from devcluster.supervisor.logread import shown

ROOT = Path(__file__).resolve().parents[2]
ECHO_SERVER = ROOT / "tests" / "services" / "echo_server.py"
HTTP_SERVER = ROOT / "tests" / "services" / "http_server.py"
#: Seconds after start the echo servers' `echo.Echo` health turns SERVING ("" at once).
READY_AFTER = 1.5

Cli = Callable[..., CompletedProcess[str]]


def write(directory: Path, procfile: str, toml: str | None) -> Path:
    (directory / "Procfile").write_text(procfile)
    if toml is not None:
        (directory / "devcluster.toml").write_text(toml)
    return directory / "Procfile"


def log_lines(directory: Path) -> list[str]:
    """The merged view of every log (instances' lines and the supervisor's, in order)."""
    return shown(directory / ".devcluster" / "logs", None, 100_000)


def first(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines) if fragment in line)


TWO_SERVICES = f"""\
echo: {sys.executable} {ECHO_SERVER} --port $PORT --ready-after {READY_AFTER}
web: {sys.executable} {HTTP_SERVER} --port $PORT
"""

TWO_SERVICES_TOML = """\
[cluster]
port = 0
grace = 3

[process.echo]
scale = 2
ready = { grpc = "echo.Echo" }   # the named service: SERVING only after READY_AFTER
weight = 3
metadata = { zone = "a", tier = "backend" }

[process.web]
depends_on = ["echo"]
ready = { http = "/healthz" }
env = { GREETING = "hi" }
"""


def test_up_d_waits_for_the_named_health_service_then_starts_its_dependant(
        tmp_path: Path, run_cli: Cli) -> None:
    write(tmp_path, TWO_SERVICES, TWO_SERVICES_TOML)
    up = run_cli("up", "-d", "--json", timeout=90)
    try:
        assert up.returncode == 0, up.stderr
        states = {i["name"]: i for i in json.loads(up.stdout)}
        assert {n: s["state"] for n, s in states.items()} == {
            "echo.1": "serving", "echo.2": "serving", "web": "serving"}
        echo = [states["echo.1"], states["echo.2"]]
        # echo.Echo cannot be SERVING before READY_AFTER: web started after that.
        assert states["web"]["started_at"] >= max(e["started_at"] for e in echo) + READY_AFTER
        lines = log_lines(tmp_path)
        started = first(lines, "web started")
        for name in ("echo.1", "echo.2"):
            assert first(lines, f"{name} serving on") < started
        assert "health of 'echo.Echo': SERVING" in lines[first(lines, "echo.1 serving on")]
        assert "GET /healthz: HTTP 200" in lines[first(lines, "web serving on")]
        # The file's weight, metadata and env reached the registry and the process.
        assert [(e["weight"], e["metadata"]) for e in echo] == \
            [(3, {"zone": "a", "tier": "backend"})] * 2
        assert (states["web"]["weight"], states["web"]["metadata"]) == (1, {})
        assert psutil.Process(states["web"]["pid"]).environ()["GREETING"] == "hi"
        with urllib.request.urlopen(f"http://{states['web']['address']}/", timeout=5) as r:
            assert r.read() == b"hello from web\n"
    finally:
        down = run_cli("down", timeout=60)
    assert down.returncode == 0, down.stderr
    lines = log_lines(tmp_path)
    # Stopped in the reverse order: the dependant first.
    assert first(lines, "web stopped") < min(first(lines, "echo.1 stopped"),
                                             first(lines, "echo.2 stopped"))


def test_dependants_of_a_dependency_that_never_serves_are_not_started(
        tmp_path: Path, run_cli: Cli) -> None:
    write(tmp_path, f"""\
db: {sys.executable} -c "print('cannot open the data file'); raise SystemExit(3)"
api: {sys.executable} {HTTP_SERVER} --port $PORT
web: {sys.executable} {HTTP_SERVER} --port $PORT
""", """\
[cluster]
port = 0
[process.db]
restart = "no"
[process.api]
depends_on = ["db"]
[process.web]
depends_on = ["api"]
ready = { tcp = true }
""")
    up = run_cli("up", "-d", "--json", timeout=90)
    try:
        assert up.returncode == 1, up.stderr
        states = {i["name"]: i for i in json.loads(up.stdout)}
        assert states["db"]["state"] == "exited"
        assert states["api"]["pid"] is None and states["web"]["pid"] is None
        assert states["api"]["last_exit"] == "not started: dependency db did not serve (exited)"
        assert states["web"]["last_exit"] == "not started: dependency api did not serve (stopped)"
        assert "api stopped (not started: dependency db did not serve" in up.stderr
    finally:
        run_cli("down", timeout=60)


def test_log_and_exec_probes_file_env_and_flags_over_the_file(tmp_path: Path) -> None:
    work = "import time; print('warming up'); time.sleep(0.5); print('READY to work'); " \
           "time.sleep(600)"
    procfile = write(tmp_path, f"""\
worker: {sys.executable} -u -c "{work}"
echo: {sys.executable} {ECHO_SERVER} --port $PORT
""", """\
[cluster]
port = 0
grace = 4

[process.worker]
ready = { log = "^READY" }
grace = 1

[process.echo]
ready = { exec = "test \\"$ZONE\\" = a && test -n \\"$PORT\\"" }
env = { ZONE = "a" }
ready_timeout = 20
""")
    with Cluster(procfile, grace=2.0, owned=True) as cluster:
        assert cluster.resolved is not None
        # --grace given: it wins over [cluster] grace and process.worker.grace.
        assert cluster.resolved.grace == 2.0
        assert {t: s.grace for t, s in cluster.resolved.types.items()} == \
            {"worker": 2.0, "echo": 2.0}
        assert cluster.resolved.types["echo"].ready_timeout == 20
        states = {i.name: i.state for i in cluster.instances}
        assert states == {"worker": "serving", "echo": "serving"}
        lines = log_lines(tmp_path)
        assert first(lines, "READY to work") < first(lines, "worker serving on")
        assert "log line 'READY to work'" in lines[first(lines, "worker serving on")]
        assert "exited 0" in lines[first(lines, "echo serving on")]
    # Without the flag, the file's grace applies per type.
    without = Cluster(procfile)
    resolved = without._resolve()
    assert (resolved.grace, resolved.types["worker"].grace, resolved.types["echo"].grace) == \
        (4.0, 1.0, 4.0)


def test_where_selects_instances_by_metadata_and_follows_changes(
        tmp_path: Path, wait_until: Callable[..., Any]) -> None:
    from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

    procfile = write(tmp_path, f"greeter: {sys.executable} -m devcluster.greeter --port $PORT\n",
                     '[cluster]\nport = 0\n[process.greeter]\nscale = 3\n'
                     'metadata = { zone = "a" }\n')
    with Cluster(procfile, grace=1.0) as cluster:
        assert cluster.meta("greeter.2", zone="b", canary="yes") == {"zone": "b", "canary": "yes"}
        assert cluster.meta("greeter.2", canary=None) == {"zone": "b"}
        assert cluster.instance("greeter.2").metadata == {"zone": "b"}
        served: list[str] = []
        with cluster.channel("greeter", where={"zone": "b"},
                             on_call=lambda info: served.append(info.instance)) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            for _ in range(6):
                stub.SayHello(helloworld_pb2.HelloRequest(name="x"), timeout=5)
            assert served == ["greeter.2"] * 6
            # A change at runtime re-selects: greeter.3 joins zone b.
            cluster.meta("greeter.3", zone="b")

            def both() -> bool:
                served.clear()
                for _ in range(4):
                    stub.SayHello(helloworld_pb2.HelloRequest(name="x"), timeout=5)
                return set(served) == {"greeter.2", "greeter.3"}

            wait_until(both, 10, "greeter.3 selected after its metadata changed")


@pytest.mark.parametrize("toml", [None, ""])
def test_no_file_or_an_empty_one_is_todays_behaviour(tmp_path: Path, toml: str | None) -> None:
    procfile = write(tmp_path, "greeter: python -m devcluster.greeter --port $PORT\n", toml)
    resolved = Cluster(procfile)._resolve()
    assert (resolved.port, resolved.grace, resolved.ready_timeout, dict(resolved.scale),
            resolved.waves) == (5000, 5.0, 30.0, {}, (("greeter",),))
    assert resolved.types["greeter"].ready is None  # the default probe: gRPC health, TCP
