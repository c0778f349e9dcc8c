"""pytest plugin (entry point ``pytest11``): real local clusters as fixtures.

Hooks and fixtures only; the engine is :class:`devcluster.api.Cluster`.

* ``cluster`` — a ready cluster configured by ini options (``devcluster_procfile``,
  ``devcluster_scale``, ``devcluster_port``, ``devcluster_grace``, ``devcluster_scope``)
  or, per test, by ``@pytest.mark.devcluster(procfile=..., scale={...})``.
* ``devcluster`` — a factory: ``devcluster("Procfile", scale={"greeter": 3})`` starts
  another cluster, stopped when the test ends.

Every cluster gets its own state dir and free ports (``port=0``), so clusters of
parallel tests never collide. When a test fails, the last log lines of every
instance are attached to its report. Teardown always stops everything, also on
KeyboardInterrupt; the supervisor also dies with the pytest process.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the engine is imported when a fixture is used, not at pytest start-up
    from devcluster.api import Cluster

_CLUSTERS = pytest.StashKey[list["Cluster"]]()
_LOG_LINES = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("devcluster_procfile", "Procfile of the `cluster` fixture (relative to rootdir)",
                  default="Procfile")
    parser.addini("devcluster_scale", "scale of the `cluster` fixture, e.g. 'greeter=3 web=2'",
                  default="")
    parser.addini("devcluster_port", "base port of the `cluster` fixture (0: free ports)",
                  default="0")
    parser.addini("devcluster_grace", "grace seconds at teardown", default="2")
    parser.addini("devcluster_scope", "scope of the `cluster` fixture: function, module, session",
                  default="function")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "devcluster(procfile=None, scale=None, port=0, **options): "
                   "configure the `cluster` fixture for this test")


def _scope(fixture_name: str, config: pytest.Config) -> str:
    return str(config.getini("devcluster_scope") or "function")


def _options(config: pytest.Config, marker: pytest.Mark | None) -> dict[str, Any]:
    scale: dict[str, int] = {}
    for item in str(config.getini("devcluster_scale")).split():
        name, _, n = item.partition("=")
        scale[name] = int(n)
    opts: dict[str, Any] = {
        "procfile": config.rootpath / str(config.getini("devcluster_procfile")),
        "scale": scale,
        "port": int(str(config.getini("devcluster_port"))),
        "grace": float(str(config.getini("devcluster_grace"))),
    }
    if marker is not None:
        if marker.args:
            opts["procfile"] = marker.args[0]
        opts.update(marker.kwargs)
    opts["procfile"] = config.rootpath / Path(opts["procfile"])
    return opts


def _start(opts: dict[str, Any], state_dir: Path, owned: list[Cluster],
           node: pytest.Item | None) -> Cluster:
    from devcluster.api import Cluster

    procfile = opts.pop("procfile")
    cluster = Cluster(procfile, state_dir=state_dir, attach=True, **opts)
    owned.append(cluster)  # before up(): a half-started cluster is still torn down
    if node is not None:
        node.stash.setdefault(_CLUSTERS, []).append(cluster)
    cluster.up()
    return cluster


def _stop_all(clusters: list[Cluster]) -> None:
    errors: list[BaseException] = []
    for cluster in reversed(clusters):
        try:
            cluster.down()
        except BaseException as e:  # keep stopping the others, even on KeyboardInterrupt
            errors.append(e)
    if errors:
        raise errors[0]


def _item(request: pytest.FixtureRequest) -> pytest.Item | None:
    return request.node if isinstance(request.node, pytest.Item) else None


@pytest.fixture
def devcluster(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    """Factory: ``devcluster(procfile, scale=..., port=0, ...)`` -> a ready :class:`Cluster`."""
    owned: list[Cluster] = []

    def factory(procfile: str | Path = "Procfile", **options: Any) -> Cluster:
        options.setdefault("port", 0)
        path = Path(procfile)
        if not path.is_absolute():
            path = request.config.rootpath / path
        return _start({"procfile": path, **options}, tmp_path_factory.mktemp("devcluster"),
                      owned, _item(request))

    try:
        yield factory
    finally:
        _stop_all(owned)


@pytest.fixture(scope=_scope)  # type: ignore[call-overload]
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Generator[Cluster, None, None]:
    """A ready cluster from the ini options or the test's ``devcluster`` marker."""
    item = _item(request)
    marker = item.get_closest_marker("devcluster") if item is not None else None
    owned: list[Cluster] = []
    try:
        yield _start(_options(request.config, marker), tmp_path_factory.mktemp("devcluster"),
                     owned, item)
    finally:
        _stop_all(owned)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator:
    """Attach the instances' last log lines to a failing test's report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for cluster in item.stash.get(_CLUSTERS, []):
        log_dir = cluster.state_dir / "logs"
        parts = []
        for log in sorted(log_dir.glob("*.log")):
            if log.stem in ("devcluster",):
                continue
            lines = cluster.logs(log.stem, _LOG_LINES)
            parts.append(f"--- {log.stem} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        supervisor = cluster.logs(None, _LOG_LINES)
        parts.append("--- devcluster (supervisor) ---\n" + "\n".join(supervisor))
        report.sections.append((f"devcluster logs: {cluster.procfile}", "\n".join(parts)))
