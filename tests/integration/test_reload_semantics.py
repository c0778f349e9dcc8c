"""A reload applies the files' counts and weights, and keeps what a runtime `scale` did
(issue 26: `scale greeter=5; reload` stopped greeter.4 and greeter.5 as "gone from the
Procfile"; a weight edited in devcluster.toml and reloaded kept the old weight)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from devcluster.api import Cluster, ReloadError
from tests.conftest import wait_until

GREETER = "python -m devcluster.greeter --port $PORT"


def serving(cluster: Cluster) -> dict[str, int | None]:
    return {i.name: i.pid for i in cluster.instances if i.state == "serving"}


def test_reload_keeps_a_runtime_scale_and_applies_the_files_counts_and_weights(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    toml = tmp_path / "devcluster.toml"
    toml.write_text("[process.greeter]\nscale = 3\n")
    cluster = make_cluster([f"greeter: {GREETER}", f"other: {GREETER}"])
    assert sorted(serving(cluster)) == ["greeter.1", "greeter.2", "greeter.3", "other"]

    cluster.scale({"greeter": 5})
    before = serving(cluster)
    result = cluster.reload()  # nothing in the files changed the count: 5 stay
    assert serving(cluster) == before
    assert not result["stopped"] and not result["started"]

    cluster.scale({"greeter": 1})
    cluster.reload()
    assert sorted(serving(cluster)) == ["greeter.1", "other"]

    # A weight edited in the file reaches the registry; the instance is not replaced.
    pid = serving(cluster)["greeter.1"]
    toml.write_text("[process.greeter]\nscale = 3\nweight = 7\n")
    result = cluster.reload()
    assert not result["reloaded"], "a weight change needs no restart"
    weights = {n: r.weight for n, r in cluster.registry.snapshot().records.items()}
    assert weights["greeter.1"] == 7 and weights["other"] != 7
    assert serving(cluster)["greeter.1"] == pid

    # The file's count changed (3 -> 2): it applies, over the runtime count of 1.
    toml.write_text("[process.greeter]\nscale = 2\nweight = 7\n")
    result = cluster.reload()
    assert result["started"] == ["greeter.2"]
    wait_until(lambda: sorted(serving(cluster)) == ["greeter.1", "greeter.2", "other"], 20,
               "the file's new count to serve")
    assert serving(cluster)["greeter.1"] == pid
    assert {n: r.weight for n, r in cluster.registry.snapshot().records.items()}["greeter.2"] == 7


def test_a_reload_cut_short_by_down_says_so(make_cluster: Callable[..., Cluster]) -> None:
    # Issue 26: `reload` during `down` said "greeter.3 keeps serving" while it stopped.
    cluster = make_cluster([f"slow: sh -c 'sleep 1.5; exec {GREETER}'"])
    errors: list[BaseException] = []

    def reload() -> None:
        try:
            cluster.reload(all=True)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=reload)
    thread.start()
    log = cluster.state_dir / "logs" / "devcluster.log"
    wait_until(lambda: "starting a replacement" in log.read_text(), 20, "the replacement")
    cluster.down()
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], ReloadError), errors
    assert "the cluster is shutting down" in str(errors[0])
    assert "keeps serving" not in str(errors[0])


def test_a_server_that_reads_port_from_its_environment_keeps_its_port(
        make_cluster: Callable[..., Cluster]) -> None:
    """`python inventory.py` (no $PORT in the command) under `-p 0`: its replacement once got
    PORT=0 too and bound a new port while the log said "the same port"."""
    cluster = make_cluster(["api: python -m devcluster.greeter"])  # it reads $PORT itself
    before = cluster.instance("api").address
    result = cluster.reload(["api"])
    assert [step["name"] for step in result["reloaded"]] == ["api"]
    assert cluster.instance("api").address == before
