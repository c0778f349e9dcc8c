"""``devcluster call`` against a real cluster: the Greeter, a service devcluster knows nothing
about (echo.Echo, types by reflection), and the same service without reflection (--proto).

One cluster serves the whole module (greeters, echo servers with reflection, one without),
so the CLI runs are the only cost of each test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from devcluster.api import Cluster

ROOT = Path(__file__).resolve().parents[2]
ECHO_SERVER = ROOT / "tests" / "services" / "echo_server.py"
ECHO_PROTO = ROOT / "tests" / "protos" / "echo.proto"
PROCFILE = f"""\
greeter: {sys.executable} -m devcluster.greeter --port $PORT
echo: {sys.executable} {ECHO_SERVER} --port $PORT
plain: {sys.executable} {ECHO_SERVER} --port $PORT --no-reflection
"""
Cli = Callable[..., CompletedProcess[str]]


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("call")
    (directory / "Procfile").write_text(PROCFILE)
    cluster = Cluster(directory / "Procfile", scale={"greeter": 2, "echo": 2}, port=0,
                      grace=1.0, ready_timeout=30.0)
    cluster.up()
    try:
        yield directory
    finally:
        cluster.down()


def json_lines(done: CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_six_greetings_each_attributed(cluster_dir: Path, devcluster_cli: Cli) -> None:
    done = devcluster_cli("call", "helloworld.Greeter/SayHello", "-d", '{"name":"x"}', "-n", "6",
                          "--json", cwd=cluster_dir)
    lines = json_lines(done)
    assert len(lines) == 6 and [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    for line in lines:
        assert line["ok"] and line["code"] == "OK"
        assert line["reply"] == {"message": f"Hello x from {line['instance']}"}
    # Reflection found that only the greeters serve helloworld.Greeter: calls go there only.
    assert {line["instance"] for line in lines} == {"greeter.1", "greeter.2"}


def test_json_lines_are_client_json_plus_reply(cluster_dir: Path, devcluster_cli: Cli) -> None:
    client = devcluster_cli("client", "--service", "greeter", "-n", "1", "--json",
                            cwd=cluster_dir)
    call = devcluster_cli("call", "helloworld.Greeter/SayHello", "--json", cwd=cluster_dir)
    client_line = json_lines(client)[0]
    call_line = json_lines(call)[0]
    assert set(call_line) == set(client_line) | {"reply"}
    assert call_line["reply"] == {"message": f"Hello  from {call_line['instance']}"}


def test_a_service_devcluster_knows_nothing_about(cluster_dir: Path, devcluster_cli: Cli) -> None:
    done = devcluster_cli("call", "echo.Echo/Say", "-d", '{"text": "hi", "times": 2}',
                          "-n", "6", "--json", cwd=cluster_dir)
    lines = json_lines(done)
    assert len(lines) == 6
    assert {line["instance"] for line in lines} == {"echo.1", "echo.2"}
    for line in lines:
        assert line["reply"]["text"] == "hihi" and line["reply"]["instance"] == line["instance"]
        assert line["reply"]["at"].endswith("Z")  # a google.protobuf.Timestamp, as JSON


def test_text_lines_name_the_instance(cluster_dir: Path, devcluster_cli: Cli) -> None:
    done = devcluster_cli("call", "echo.Echo/Say", "-d", '{"text": "a"}', "-n", "2",
                          "--interval", "0.01", cwd=cluster_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for number, line in enumerate(lines, start=1):
        seq, instance, address, ms, unit, reply = line.split(maxsplit=5)
        assert (seq, unit) == (str(number), "ms") and instance in {"echo.1", "echo.2"}
        assert address.startswith("127.0.0.1:") and float(ms) >= 0
        assert json.loads(reply)["instance"] == instance


def test_a_server_without_reflection_needs_proto(cluster_dir: Path, devcluster_cli: Cli) -> None:
    done = devcluster_cli("call", "echo.Echo/Say", "--service", "plain", cwd=cluster_dir)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "devcluster: error: the server offers no reflection service, so the types of echo.Echo "
        "are unknown; pass --proto FILE.proto (and -I DIR for its imports)"]
    done = devcluster_cli("call", "echo.Echo/Say", "--service", "plain", "--proto",
                          str(ECHO_PROTO), "-d", '{"text": "p"}', "-n", "3", "--json",
                          cwd=cluster_dir)
    lines = json_lines(done)
    assert [(line["instance"], line["reply"]["text"]) for line in lines] == [("plain", "p")] * 3


def test_proto_over_every_instance_reports_those_without_the_service(
        cluster_dir: Path, devcluster_cli: Cli) -> None:
    done = devcluster_cli("call", "echo.Echo/Say", "--proto", str(ECHO_PROTO), "-n", "5",
                          "--json", cwd=cluster_dir)
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 5
    for line in lines:
        greeter = line["instance"].startswith("greeter")
        assert line["code"] == ("UNIMPLEMENTED" if greeter else "OK")
        assert (line["reply"] is None) == greeter
    assert "pick the ones that do with --service NAME" in done.stderr


# (args, exit status, fragment of the one line on stderr)
BAD: dict[str, tuple[tuple[str, ...], int, str]] = {
    "bad method name": (("call", "SayHello"), 2, "write it as package.Service/Method"),
    "unknown service": (("call", "helloworld.Greater/SayHello"), 2,
                        "did you mean 'helloworld.Greeter'?"),
    "unknown method": (("call", "echo.Echo/Sey"), 2, "did you mean 'Say'?"),
    "streaming method": (("call", "echo.Echo/Count"), 2, "unary methods only"),
    "JSON that does not fit": (("call", "echo.Echo/Say", "-d", '{"txt": 1}'), 2,
                               'has no field named "txt"'),
    "JSON of a wrong type": (("call", "echo.Echo/Say", "-d", '{"times": "x"}'), 2,
                             "does not fit echo.SayRequest"),
    "not JSON": (("call", "echo.Echo/Say", "-d", "text=hi"), 2, "does not fit"),
    "count zero": (("call", "echo.Echo/Say", "-n", "0"), 2, "--count must be >= 1"),
    "imports without proto": (("call", "echo.Echo/Say", "-I", "."), 2, "pass --proto FILE too"),
    "missing proto": (("call", "echo.Echo/Say", "--proto", "nope.proto"), 2, "no such file"),
    "no such service in the registry": (("call", "echo.Echo/Say", "--service", "nope"), 1,
                                        "no serving instance of service 'nope'"),
}


@pytest.mark.parametrize(("args", "code", "fragment"), BAD.values(), ids=BAD.keys())
def test_mistakes_are_one_line(cluster_dir: Path, devcluster_cli: Cli, args: tuple[str, ...],
                               code: int, fragment: str) -> None:
    done = devcluster_cli(*args, cwd=cluster_dir)
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
    assert lines[0].startswith("devcluster: error: ") and done.stdout == ""


def test_no_cluster(tmp_path: Path, devcluster_cli: Cli) -> None:
    done = devcluster_cli("call", "helloworld.Greeter/SayHello", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"devcluster: error: no registry in {tmp_path / '.devcluster'}"
                                   "; start a cluster with `devcluster up` (or pass --state-dir)")
