"""`[xds.<name>]` groups (issue 27): an extra xDS listener over the instances of some types
and/or with some metadata, e.g. a canary group; `devcluster xds` lists it; a client of
``xds:///canary`` reaches exactly those instances and follows a metadata change."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from devcluster.api import Cluster
from tests._servers import wait_for
from tests._xds import XdsClient

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_a_canary_group_is_its_own_listener(make_cluster: Callable[..., Cluster], run_cli: Cli,
                                            tmp_path: Path) -> None:
    (tmp_path / "devcluster.toml").write_text(
        '[xds.canary]\ntypes = ["greeter"]\nwhere = { version = "v2" }\n')
    cluster = make_cluster(scale={"greeter": 3})
    cluster.meta("greeter.3", version="v2")
    setup = json.loads(run_cli("xds", "--json").stdout)
    assert setup["listeners"] == ["canary", "greeter"]
    client = XdsClient(setup["bootstrap"], tmp_path / "canary-client.log", "xds:///canary")
    try:
        out = client.ask(op="count", n=30)
        assert out["errors"] == {} and out["counts"] == {"greeter.3": 30}
        cluster.meta("greeter.2", version="v2")  # joins the canary at the next push
        wait_for(lambda: "greeter.2" in client.ask(op="count", n=10)["counts"], 10,
                 "greeter.2 in the canary")
        assert set(client.ask(op="count", n=40)["counts"]) == {"greeter.2", "greeter.3"}
    finally:
        client.close()

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
