"""The console's JSON API and its guard, against a real cluster over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.api import Cluster
from devcluster.console import Console
from devcluster.registry import open_registry

GREETER = "python -m devcluster.greeter --port $PORT"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(console: Console, method: str, path: str, body: Any = None, *,
            token: str | None = "", headers: dict[str, str] | None = None,
            raw: bytes | None = None) -> Answer:
    """One HTTP request; ``token=""`` means the console's own, None means none."""
    conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
    sent = {"Host": f"127.0.0.1:{console.port}"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token or console.token}"
    if body is not None or raw is not None:
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("console-api")
    procfile = directory / "Procfile"
    procfile.write_text("".join(f"server{i}: {GREETER}\n" for i in (1, 2, 3)))
    with Cluster(procfile, port=0, grace=1.0, ready_timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def console(cluster: Cluster) -> Iterator[Console]:
    with Console(cluster.state_dir) as c:
        yield c


def wait_state(cluster: Cluster, name: str, state: str, wait_until: Any) -> None:
    wait_until(lambda: cluster.instance(name).state == state, 15, f"{name} {state}")


# -- the bad-input table ----------------------------------------------------------------

FOREIGN = {"Origin": "http://evil.example"}

BAD = [
    # (what, method, path, body, token, extra headers, status)
    ("no token", "GET", "/api/instances", None, None, {}, 401),
    ("no token, page", "GET", "/", None, None, {}, 401),
    ("wrong bearer token", "GET", "/api/instances", None, "nope", {}, 401),
    ("wrong token in the query", "GET", "/api/instances?token=nope", None, None, {}, 401),
    ("wrong token cookie", "GET", "/api/events", None, None, {"Cookie": "x=1"}, 401),
    ("no token, state change", "POST", "/api/instances/server1/kill", None, None, {}, 401),
    ("foreign Host (DNS rebinding)", "GET", "/api/instances", None, "",
     {"Host": "evil.example"}, 421),
    ("foreign Host with our port", "GET", "/", None, "", {"Host": "evil.example:{port}"}, 421),
    ("foreign origin kills", "POST", "/api/instances/server1/kill", None, "", FOREIGN, 403),
    ("foreign origin weighs", "POST", "/api/instances/server1/weight", {"weight": 0}, "",
     FOREIGN, 403),
    ("foreign origin scales", "POST", "/api/scale", {"type": "server1", "count": 0}, "",
     FOREIGN, 403),
    ("null origin", "POST", "/api/instances/server1/stop", None, "", {"Origin": "null"}, 403),
    ("cross-site fetch", "POST", "/api/instances/server1/disable", None, "",
     {"Sec-Fetch-Site": "cross-site"}, 403),
    ("other port's origin", "POST", "/api/instances/server1/kill", None, "",
     {"Origin": "http://127.0.0.1:1"}, 403),
    ("unknown instance", "POST", "/api/instances/nosuch/kill", None, "", {}, 404),
    ("unknown instance weight", "POST", "/api/instances/nosuch/weight", {"weight": 1}, "", {},
     404),
    ("unknown action", "POST", "/api/instances/server1/explode", None, "", {}, 404),
    ("weight not a number", "POST", "/api/instances/server1/weight", {"weight": "heavy"}, "",
     {}, 400),
    ("weight a fraction", "POST", "/api/instances/server1/weight", {"weight": 2.5}, "", {}, 400),
    ("weight a boolean", "POST", "/api/instances/server1/weight", {"weight": True}, "", {}, 400),
    ("weight too big", "POST", "/api/instances/server1/weight", {"weight": 5000}, "", {}, 400),
    ("weight missing", "POST", "/api/instances/server1/weight", {"w": 1}, "", {}, 400),
    ("weight body not JSON", "POST", "/api/instances/server1/weight", b"weight=5", "", {}, 400),
    ("weight body a list", "POST", "/api/instances/server1/weight", [5], "", {}, 400),
    # Issue 26 item 16: int() reads other scripts' digits; a weight is ASCII digits only.
    ("weight in Arabic-Indic digits", "POST", "/api/instances/server1/weight",
     {"weight": "\u0661\u0662"}, "", {}, 400),
    ("weight in full-width digits", "POST", "/api/instances/server1/weight",
     {"weight": "\uff11\uff12"}, "", {}, 400),
    ("weight with an underscore", "POST", "/api/instances/server1/weight", {"weight": "1_0"},
     "", {}, 400),
    ("scale count in Arabic-Indic digits", "POST", "/api/scale",
     {"type": "server1", "count": "\u0661\u0662"}, "", {}, 400),
    ("scale unknown type", "POST", "/api/scale", {"type": "nosuch", "count": 1}, "", {}, 404),
    ("scale negative", "POST", "/api/scale", {"type": "server1", "count": -1}, "", {}, 400),
    ("scale count not a number", "POST", "/api/scale", {"type": "server1", "count": "x"}, "",
     {}, 400),
    ("weight of 5,000 digits", "POST", "/api/instances/server1/weight",
     b'{"weight": ' + b"9" * 5000 + b"}", "", {}, 400),
    ("weight a string of 5,000 digits", "POST", "/api/instances/server1/weight",
     {"weight": "9" * 5000}, "", {}, 400),
    ("8,000 nested brackets", "POST", "/api/instances/server1/weight", b"[" * 8000, "", {},
     400),
    ("nested too deep, closed", "POST", "/api/scale",
     b'{"type": ' + b"[" * 100 + b"]" * 100 + b"}", "", {}, 400),
    ("scale count of 5,000 digits", "POST", "/api/scale",
     b'{"type": "server1", "count": ' + b"9" * 5000 + b"}", "", {}, 400),
    ("a non-ASCII bearer token", "GET", "/api/instances", None, None,
     {"Authorization": "Bearer \xff"}, 401),
    ("a non-ASCII token in the query", "GET", "/api/instances?token=%FF", None, None, {}, 401),
    ("unknown route", "GET", "/api/nothing", None, "", {}, 404),
    ("wrong method", "GET", "/api/instances/server1/kill", None, "", {}, 405),
]


@pytest.mark.parametrize(("what", "method", "path", "body", "token", "headers", "status"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_input(console: Console, cluster: Cluster, caplog: pytest.LogCaptureFixture,
                   what: str, method: str, path: str, body: Any, token: str | None,
                   headers: dict[str, str], status: int) -> None:
    headers = {k: v.format(port=console.port) for k, v in headers.items()}
    raw = body if isinstance(body, bytes) else None
    answer = request(console, method, path, None if raw else body, token=token,
                     headers=headers, raw=raw)
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error
    assert "Traceback" not in error
    assert len(error) < 300  # names the problem; does not echo 5,000 digits back
    # the console logged no traceback (it may share the supervisor's log)
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    # nothing was changed by a refused request
    assert [r.state for r in cluster.ps()] == ["serving"] * 3
    assert {r.weight for r in cluster.registry.snapshot().records.values()} == {1}


def test_printed_url_redirects_to_the_page_with_a_path_scoped_cookie(console: Console) -> None:
    first = request(console, "GET", f"/?token={console.token}", token=None)
    assert first.status == 303, first.body
    prefix = first.headers["Location"]
    assert prefix.startswith("/c/") and prefix.endswith("/") and len(prefix) > 20
    assert console.page_url == console.origin + prefix
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"devcluster-console-{console.port}={console.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # Scoped to the page's random path: the browser sends it to no other server.
    assert f"Path={prefix};" in cookie + ";"
    jar = {"Cookie": f"devcluster-console-{console.port}={console.token}"}
    page = request(console, "GET", prefix, token=None, headers=jar)
    assert page.status == 200
    assert b"devcluster console" in page.body
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'sha256-" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"
    then = request(console, "GET", prefix + "api/instances", token=None, headers=jar)
    assert then.status == 200
    assert [r["name"] for r in then.json()] == ["server1", "server2", "server3"]
    # The cookie counts on the page's path only: where it came from elsewhere, it leaked.
    assert request(console, "GET", "/api/instances", token=None, headers=jar).status == 401
    assert request(console, "GET", "/", token=None, headers=jar).status == 401
    wrong = request(console, "GET", prefix + "api/instances", token=None,
                    headers={"Cookie": f"devcluster-console-{console.port}=guess"})
    assert wrong.status == 401
    assert request(console, "GET", prefix, token=None).status == 401
    bearer = request(console, "GET", prefix + "api/instances")
    assert bearer.status == 200
    via_localhost = request(console, "GET", "/api/instances",
                            headers={"Host": f"localhost:{console.port}"})
    assert via_localhost.status == 200


def test_bad_input_names_the_problem(console: Console) -> None:
    huge = request(console, "POST", "/api/instances/server1/weight", token="",
                   raw=b'{"weight": ' + b"9" * 5000 + b"}")
    assert huge.json()["error"] == "weight must be an integer 0..1000, got a 5000-digit number"
    deep = request(console, "POST", "/api/instances/server1/weight", raw=b"[" * 8000)
    assert "nested too deep" in deep.json()["error"]
    odd = request(console, "GET", "/api/instances", token=None,
                  headers={"Authorization": "Bearer \xff"})
    assert odd.json()["error"].startswith("invalid token")


def test_listens_on_loopback_only(console: Console) -> None:
    mine = [c for c in psutil.Process().net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == console.port]
    assert [c.laddr.ip for c in mine] == ["127.0.0.1"]
    assert console.url == f"http://127.0.0.1:{console.port}/?token={console.token}"


def test_instances_are_ps_json_rows(console: Console, cluster: Cluster) -> None:
    answer = request(console, "GET", "/api/instances")
    assert answer.status == 200
    rows = answer.json()
    ps = [i.to_dict() for i in cluster.ps()]
    assert [r["name"] for r in rows] == ["server1", "server2", "server3"]
    assert [sorted(r) for r in rows] == [sorted(r) for r in ps]
    assert [r["pid"] for r in rows] == [r["pid"] for r in ps]


def test_actions_change_the_real_cluster(console: Console, cluster: Cluster,
                                         wait_until: Any) -> None:
    ok = {"Origin": console.origin}  # what the page itself sends
    try:
        answer = request(console, "POST", "/api/instances/server2/weight", {"weight": 4},
                         headers=ok)
        assert answer.status == 200 and answer.json()["weight"] == 4
        assert cluster.registry.get("server2").weight == 4
        assert request(console, "POST", "/api/instances/server2/weight",
                       {"weight": "6"}).json()["weight"] == 6
        assert request(console, "POST", "/api/instances/server2/disable").status == 200
        assert cluster.registry.get("server2").enabled is False
        assert request(console, "POST", "/api/instances/server2/enable").status == 200
        assert cluster.registry.get("server2").enabled is True
        for verb, state in (("kill", "killed"), ("start", "serving"), ("pause", "paused"),
                            ("resume", "serving"), ("stop", "stopped"),
                            ("restart", "serving")):
            answer = request(console, "POST", f"/api/instances/server3/{verb}", headers=ok)
            assert answer.status == 200, answer.body
            assert answer.json()[0]["name"] == "server3"
            wait_state(cluster, "server3", state, wait_until)
    finally:
        cluster.weight("server2", 1)
        cluster.start("server3")


def test_scale_grows_and_shrinks_a_type(console: Console, cluster: Cluster,
                                        wait_until: Any) -> None:
    try:
        answer = request(console, "POST", "/api/scale", {"type": "server1", "count": 2})
        assert answer.status == 200, answer.body
        wait_until(lambda: sum(r.state == "serving" for r in cluster.instances
                               if r.name.startswith("server1")) == 2, 20, "server1 x2")
    finally:
        cluster.scale(server1=1)
    wait_until(lambda: len(cluster.ps()) == 3, 20, "back to 3 instances")


def read_events(response: http.client.HTTPResponse) -> Iterator[tuple[str, Any]]:
    event = None
    for line in response:
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            event = text[7:]
        elif text.startswith("data: ") and event is not None:
            yield event, json.loads(text[6:])
            event = None


def open_events(console: Console) -> tuple[http.client.HTTPConnection, Iterator[tuple[str, Any]]]:
    conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=20)
    conn.request("GET", "/api/events", headers={"Host": f"127.0.0.1:{console.port}",
                                                "Authorization": f"Bearer {console.token}"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return conn, read_events(response)


def test_events_push_every_registry_change(console: Console, cluster: Cluster) -> None:
    conn, events = open_events(console)
    try:
        kind, first = next(events)
        assert kind == "instances"
        assert {"server1", "server2", "server3"} <= {r["name"] for r in first["instances"]}
        for weight in (3, 9):
            started = time.monotonic()
            cluster.weight("server1", weight)
            for kind, data in events:
                by_name = {r["name"]: r for r in data.get("instances", [])}
                if kind == "instances" and by_name["server1"]["weight"] == weight:
                    break
            took = time.monotonic() - started
            assert took < 2.0, f"the change took {took:.3f} s to show"
    finally:
        conn.close()
        cluster.weight("server1", 1)


def test_events_carry_client_statistics(console: Console, cluster: Cluster) -> None:
    from devcluster._proto.helloworld_pb2 import HelloRequest
    from devcluster._proto.helloworld_pb2_grpc import GreeterStub
    from devcluster.client import BalancedChannel
    from devcluster.client.stats import StatsPublisher

    conn, events = open_events(console)
    stats = StatsPublisher(cluster.state_dir, interval=0.2)
    stop = threading.Event()

    def calls(stub: GreeterStub) -> None:
        while not stop.wait(0.005):
            stub.SayHello(HelloRequest(name="chart"), timeout=5)

    try:
        with BalancedChannel(None, cluster.registry, on_call=stats.on_call) as channel:
            caller = threading.Thread(target=calls, args=(GreeterStub(channel),))
            caller.start()
            try:
                deadline = time.monotonic() + 20
                for kind, data in events:
                    if kind == "traffic" and len([t for t in data["traffic"].values()
                                                  if t["calls_per_s"] > 0]) == 3:
                        break
                    assert time.monotonic() < deadline, "no traffic event for all three"
            finally:
                stop.set()
                caller.join()
    finally:
        stats.close()
        conn.close()


def test_cli_console_prints_its_url_and_stops_on_ctrl_c(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEVCLUSTER_HOME"}
    proc = subprocess.Popen([sys.executable, "-m", "devcluster", "console", "--state-dir",
                             str(cluster.state_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        port = int(url.split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", url.split(str(port), 1)[1])
        answer = conn.getresponse()
        assert answer.status == 303 and answer.headers["Location"].startswith("/c/")
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 130


def test_cli_console_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "devcluster", "console", "--state-dir",
                             str(tmp_path / "none")], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no registry" in result.stderr


def test_etcd_backend(tmp_path: Path, wait_until: Any) -> None:
    from tests._etcd import require_etcd, running_etcd

    require_etcd()
    (tmp_path / "Procfile").write_text(f"server1: {GREETER}\nserver2: {GREETER}\n")
    with running_etcd(tmp_path / "etcd") as etcd:
        url = etcd.url("/console-test")
        with Cluster(tmp_path / "Procfile", port=0, grace=1.0, registry=url) as cluster, \
                Console(cluster.state_dir, url) as console:
            rows = request(console, "GET", "/api/instances").json()
            assert [r["name"] for r in rows] == ["server1", "server2"]
            conn, events = open_events(console)
            try:
                next(events)
                answer = request(console, "POST", "/api/instances/server2/weight",
                                 {"weight": 5})
                assert answer.status == 200
                assert open_registry(url).snapshot().records["server2"].weight == 5
                for kind, data in events:
                    if kind == "instances" and data["instances"][1]["weight"] == 5:
                        break
                assert request(console, "POST", "/api/instances/server1/kill").status == 200
                wait_state(cluster, "server1", "killed", wait_until)
            finally:
                conn.close()
