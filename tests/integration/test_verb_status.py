"""`start`, `restart` and `scale` exit 1 when an instance they waited for ends without
serving, `--json` too, and the Python API raises NotReadyError (issue 26 item 7: they
exited 0, so `devcluster restart X && run_tests` went ahead on a broken instance)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devcluster.api import Cluster, NotReadyError

GREETER = "python -m devcluster.greeter --port $PORT"
Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_a_verb_that_leaves_an_instance_broken_exits_1(
        make_cluster: Callable[..., Cluster], run_cli: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "BROKEN"
    line = f"api: sh -c 'test -f {broken} && {{ echo cannot start; exit 3; }}; exec {GREETER}'"
    cluster = make_cluster([line], restart={"api": "no"})
    broken.write_text("")

    result = run_cli("restart", "api")
    assert result.returncode == 1, result
    assert result.stderr.startswith("devcluster: error: restart: not serving: api exited")
    assert "exit 3" in result.stderr and "cannot start" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("start", "api", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)[0]["state"] == "exited"  # the answer is still data

    with pytest.raises(NotReadyError, match=r"scale: not serving: .*api\.2 exited"):
        cluster.scale(api=2)
    with pytest.raises(NotReadyError, match="start: not serving: api") as caught:
        cluster.start("api")
    assert caught.value.states["api"]["state"] == "exited"

    broken.unlink()  # fixed: the same verbs exit 0
    assert run_cli("restart", "api").returncode == 0
    assert [i.state for i in cluster.start("api.2")] == ["serving"]
    assert run_cli("scale", "api=3").returncode == 0
