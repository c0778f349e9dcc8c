"""``devcluster init`` as a new user runs it: in an empty folder, then ``up -d``, ``call``,
the generated pytest test (``python -m pytest`` in that folder) and ``down``, for a
Python and a Node server; in a folder with a .proto of its own; and never over a file.

Everything is real: the generated code is compiled by protoc, the servers are started by
devcluster, the generated test runs in a pytest process of its own (its clusters'
processes live under the project, so the leak check sees them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import cli_env

Cli = Callable[..., subprocess.CompletedProcess[str]]
NODE, NPM = shutil.which("node"), shutil.which("npm")

#: A proto of the user's own, in a folder of its own, with a streaming method first, a
#: well-known type, and a second service that init leaves alone.
INVENTORY = """\
syntax = "proto3";
package inventory.v1;
import "google/protobuf/empty.proto";

service Inventory {
  rpc Watch (GetRequest) returns (stream Item);
  rpc Get (GetRequest) returns (Item);
  rpc Ping (google.protobuf.Empty) returns (google.protobuf.Empty);
}
service Audit { rpc Log (Item) returns (google.protobuf.Empty); }

message GetRequest { string sku = 1; }
message Item { string sku = 1; int32 stock = 2; }
"""


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _generated_tests(project: Path, tmp_path: Path) -> str:
    """``python -m pytest`` in the project, as its user runs it (no pytest settings of ours)."""
    env = {k: v for k, v in cli_env().items() if not k.startswith(("PYTEST_", "DEVCLUSTER_"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "generated-tests")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _addresses(project: Path, run_cli: Cli) -> dict[str, str]:
    return {r["name"]: r["address"] for r in json.loads(_ok(run_cli("ps", "--json", cwd=project)))}


def _up_call_test_down(project: Path, method: str, data: str, run_cli: Cli, tmp_path: Path,
                       same_ports: bool = True) -> list[dict[str, object]]:
    """``up -d -p 0``, ``call METHOD -n 4 --json``, the generated test, a reload (a Python
    server's replacement shares its instance's port; grpc-js on Node 20 cannot, so its
    replacement gets a spare one), ``down``: the calls."""
    _ok(run_cli("up", "-d", "-p", "0", cwd=project, timeout=90))
    try:
        called = _ok(run_cli("call", method, "-d", data, "-n", "4", "--json", cwd=project))
        assert "passed" in _generated_tests(project, tmp_path)
        before = _addresses(project, run_cli)
        _ok(run_cli("reload", "--all", cwd=project, timeout=90))
        after = _addresses(project, run_cli)
        assert after == before if same_ports else after.keys() == before.keys()
    finally:
        down = run_cli("down", "--grace", "2", cwd=project)
    _ok(down)
    return [json.loads(line) for line in called.splitlines()]


def test_python_project_from_an_empty_folder(tmp_path: Path, run_cli: Cli) -> None:
    said = _ok(run_cli("init", "shop"))
    project = tmp_path / "shop"
    assert set(_files(project)) == {"protos/shop.proto", "shop_pb2.py", "shop_pb2_grpc.py",
                                    "server.py", "Procfile", "devcluster.toml", "test_shop.py"}
    assert "wrote server.py" in said and "next: cd shop && devcluster up" in said
    assert (project / "Procfile").read_text() == "shop: python server.py --port $PORT\n"
    calls = _up_call_test_down(project, "shop.v1.Shop/Hello", '{"name": "you"}', run_cli, tmp_path)
    assert {c["instance"] for c in calls} == {"shop.1", "shop.2"}  # scale 2, both answer
    for c in calls:
        assert c["reply"] == {"message": f"Hello you from {c['instance']}",
                              "servedBy": c["instance"]}


@pytest.mark.timeout(600)
@pytest.mark.skipif(NODE is None or NPM is None,
                    reason="node and npm are not both installed (apt-get install nodejs npm): "
                           "the generated grpc-js server cannot run")
def test_node_project_from_an_empty_folder(tmp_path: Path, run_cli: Cli) -> None:
    project = tmp_path / "greet"
    said = _ok(run_cli("init", str(project), "--lang", "node", "--name", "greet"))
    assert set(_files(project)) == {"protos/greet.proto", "server.js", "package.json",
                                    "Procfile", "devcluster.toml", "test_greet.py"}
    assert "npm install && devcluster up" in said
    assert NPM is not None
    npm = subprocess.run([NPM, "install", "--no-audit", "--no-fund"], cwd=project,
                         capture_output=True, text=True, timeout=500, check=False)
    assert npm.returncode == 0, npm.stdout + npm.stderr
    calls = _up_call_test_down(project, "greet.v1.Greet/Hello", '{"name": "n"}', run_cli, tmp_path,
                               same_ports=False)
    assert {c["instance"] for c in calls} == {"greet.1", "greet.2"}
    assert all(c["reply"] == {"message": f"Hello n from {c['instance']}",
                              "servedBy": c["instance"]} for c in calls)


def test_a_folder_with_a_proto_gets_its_first_service(tmp_path: Path, run_cli: Cli) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "inventory.proto").write_text(INVENTORY)
    said = _ok(run_cli("init"))
    assert said.startswith("service inventory.v1.Inventory of api/inventory.proto")
    assert "next: devcluster up\n" in said
    assert "protos" not in {p.parts[0] for p in tmp_path.iterdir()}  # no second proto
    assert (tmp_path / "api" / "inventory.proto").read_text() == INVENTORY
    assert "Watch" in (tmp_path / "server.py").read_text()  # named as UNIMPLEMENTED for now
    calls = _up_call_test_down(tmp_path, "inventory.v1.Inventory/Get", "{}", run_cli, tmp_path)
    assert {c["instance"] for c in calls} == {"inventory.1", "inventory.2"}
    assert all(c["reply"] == {} for c in calls)  # the empty Item of the generated method


def test_init_never_overwrites_a_file(tmp_path: Path, run_cli: Cli) -> None:
    (tmp_path / "Procfile").write_text("web: python web.py\n")
    (tmp_path / "server.py").write_text("# mine\n")
    before = _files(tmp_path)
    result = run_cli("init", "--name", "shop")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("devcluster: error: init writes nothing: server.py, Procfile "
                           "already exist in ")
    assert _files(tmp_path) == before  # nothing written, nothing changed


@pytest.mark.parametrize(("args", "fragment"), [
    (("--lang", "go"), "argument --lang: invalid choice: 'go'"),
    (("--name", "my shop"), "--name 'my shop': a service name is letters"),
    (("--bogus",), "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_one_line_and_exit_2(args: tuple[str, ...], fragment: str,
                                           tmp_path: Path, run_cli: Cli) -> None:
    result = run_cli("init", *args)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("devcluster: error: ") and fragment in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("protos", "fragment"), [
    ({"a.proto": 'syntax = "proto3";\nservice A { rpc X (Nope) returns (Nope); }\n'},
     "a.proto does not compile: "),
    ({"a.proto": INVENTORY, "b/b.proto": 'syntax = "proto3";\nservice B {}\n'},
     "several .proto files define a service (a.proto, b/b.proto)"),
    ({"types.proto": 'syntax = "proto3";\nmessage T {}\n'}, "types.proto: no service defined"),
])
def test_a_proto_init_cannot_use_is_one_line_and_exit_1(
        protos: dict[str, str], fragment: str, tmp_path: Path, run_cli: Cli) -> None:
    for path, text in protos.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(text)
    before = _files(tmp_path)
    result = run_cli("init")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("devcluster: error: ") and fragment in line
    assert _files(tmp_path) == before


def test_json_names_the_service_and_the_files(tmp_path: Path, run_cli: Cli) -> None:
    """No --name: the folder's name, made an identifier (``my-app`` -> ``my_app``)."""
    answer = json.loads(_ok(run_cli("init", "my-app", "--lang", "node", "--json")))
    assert answer == {"dir": str(tmp_path / "my-app"), "lang": "node", "name": "my_app",
                      "service": "my_app.v1.MyApp", "proto": "protos/my_app.proto",
                      "wrote": ["protos/my_app.proto", "server.js", "package.json", "Procfile",
                                "devcluster.toml", "test_my_app.py"],
                      "next": "cd my-app && npm install && devcluster up"}
    assert (tmp_path / "my-app" / "Procfile").read_text() == "my_app: node server.js --port $PORT\n"
