"""`[xds.<name>]` groups (issue 27): an extra xDS listener over the instances of some types
and/or with some metadata, e.g. a canary group; `devcluster xds` lists it; a client of
``xds:///canary`` reaches exactly those instances and follows a metadata change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from devcluster.api import Cluster
from tests._servers import ROOT, wait_for

CLIENT = ROOT / "tests" / "xds" / "_xds_client.py"
Cli = Callable[..., subprocess.CompletedProcess[str]]


def ask(proc: subprocess.Popen[str], **cmd: object) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(cmd) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, f"the xDS client exited with {proc.poll()}"
    answer: dict[str, object] = json.loads(line)
    return answer


def test_a_canary_group_is_its_own_listener(make_cluster: Callable[..., Cluster], run_cli: Cli,
                                            tmp_path: Path) -> None:
    (tmp_path / "devcluster.toml").write_text(
        '[xds.canary]\ntypes = ["greeter"]\nwhere = { version = "v2" }\n')
    cluster = make_cluster(scale={"greeter": 3})
    cluster.meta("greeter.3", version="v2")
    setup = json.loads(run_cli("xds", "--json").stdout)
    assert setup["listeners"] == ["canary", "greeter"]
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": setup["bootstrap"], "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(CLIENT), "xds:///canary"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None and json.loads(proc.stdout.readline())["ready"]
        out = ask(proc, op="count", n=30)
        assert out["errors"] == {} and out["counts"] == {"greeter.3": 30}
        cluster.meta("greeter.2", version="v2")  # joins the canary at the next push
        wait_for(lambda: "greeter.2" in ask(proc, op="count", n=10)["counts"], 10,  # type: ignore[operator]
                 "greeter.2 in the canary")
        assert set(ask(proc, op="count", n=40)["counts"]) == {"greeter.2", "greeter.3"}  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait()


def test_bad_groups_are_one_line(run_cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
    for text, said in [
        ('[xds.canary]\ntypes = ["gretter"]\n',
         "xds.canary.types names 'gretter', not a Procfile type; did you mean 'greeter'?"),
        ("[xds.canary]\n", "selects every instance"),
        ('[xds.canary]\nwhere = { version = "v2" }\nweight = 2\n', "weight is not a known key"),
    ]:
        (tmp_path / "devcluster.toml").write_text(text)
        result = run_cli("up", "-d", "-p", "0")
        assert result.returncode == 2, result
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
