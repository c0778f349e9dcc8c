"""pytest plugin (entry point ``pytest11``): real local clusters as fixtures.

Hooks and fixtures only; the engine is :class:`devcluster.api.Cluster` (recording
its timeline: :mod:`.recording`), kept per scope by :mod:`.pool`, shared across
xdist workers by :mod:`.sharing`, checked for leaks by :mod:`.leaks`.

* ``cluster`` — a ready cluster configured by ini options (``devcluster_procfile``,
  ``devcluster_scale``, ``devcluster_port``, ``devcluster_grace``, ``devcluster_scope``)
  or, per test, by ``@pytest.mark.devcluster(procfile=..., scale={...}, scope=...)``.
* ``devcluster`` — a factory: ``devcluster("Procfile", scale={"greeter": 3})`` starts
  another cluster, stopped when the test ends.

Every cluster gets its own state dir and free ports (``port=0``), so clusters of
parallel tests never collide. A session-scoped cluster under pytest-xdist is one
cluster for the whole run, shared by every worker (``devcluster_share = false``: one
per worker). When a test fails, its report gets a ``devcluster`` section: the
cluster's timeline during the test, the calls per instance made through
``cluster.channel()``, and the last log lines of every instance. At the end of the
session, a process devcluster started that is still alive is named, killed, and
fails the run. Teardown always stops everything, also on KeyboardInterrupt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

if TYPE_CHECKING:  # the engine is imported when a fixture is used, not at pytest start-up
    from devcluster.pytest_plugin.leaks import Leak
    from devcluster.pytest_plugin.pool import Pool
    from devcluster.pytest_plugin.recording import PluginCluster
    from devcluster.pytest_plugin.sharing import SharedRun  # noqa: F401 - in a StashKey

_POOL = pytest.StashKey["Pool"]()
_RUN = pytest.StashKey["SharedRun"]()  # the controller's view of the xdist run
_MEMBER = pytest.StashKey["SharedRun"]()  # a worker's view of it
_LEAKS = pytest.StashKey[list["Leak"]]()
_CLUSTERS = pytest.StashKey[list["PluginCluster"]]()
_STARTED = pytest.StashKey[float]()
_CURRENT = pytest.StashKey[str]()  # node id of the running test
_CALLS_BEFORE = pytest.StashKey[dict[int, dict[str, dict[str, int]]]]()
_WORKER_LEAKS = "devcluster_leaks"
_RUN_DIR = "devcluster_run"


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
    parser.addini("devcluster_share", "share session-scoped clusters across pytest-xdist "
                  "workers (false: one per worker)", type="bool", default=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "devcluster(procfile=None, scale=None, port=0, scope='function', **options): "
                   "configure the `cluster` fixture for this test")
    config.stash[_LEAKS] = []


def _pool(config: pytest.Config) -> Pool:
    if _POOL not in config.stash:
        from devcluster.pytest_plugin.pool import Pool

        config.stash[_POOL] = Pool(config.stash.get(_MEMBER, None),
                                   who=lambda: config.stash.get(_CURRENT, "test"))
    return config.stash[_POOL]


def pytest_sessionstart(session: pytest.Session) -> None:
    """xdist worker: join the run, so that only the last worker to finish stops its
    shared clusters (a worker done early does not, even if others have not used them yet)."""
    config = session.config
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or not config.getini("devcluster_share"):
        return
    from devcluster.pytest_plugin.sharing import SharedRun

    run = (SharedRun(Path(workerinput[_RUN_DIR])) if _RUN_DIR in workerinput
           else SharedRun.of(workerinput["testrunuid"]))
    with run.locked():
        run.join()
    config.stash[_MEMBER] = run


_Scope = Literal["session", "package", "module", "class", "function"]


def _scope(fixture_name: str, config: pytest.Config) -> _Scope:
    # pytest itself refuses a value that is not a scope, with its own message.
    return cast(_Scope, str(config.getini("devcluster_scope") or "function"))


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


def _item(request: pytest.FixtureRequest) -> pytest.Item | None:
    return request.node if isinstance(request.node, pytest.Item) else None


def _used_by(item: pytest.Item | None, cluster: PluginCluster) -> PluginCluster:
    if item is not None:
        item.stash.setdefault(_CLUSTERS, []).append(cluster)
    return cluster


@pytest.fixture
def devcluster(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PluginCluster]]:
    """Factory: ``devcluster(procfile, scale=..., port=0, ...)`` -> a ready cluster."""
    pool = _pool(request.config)

    def factory(procfile: str | Path = "Procfile", **options: Any) -> PluginCluster:
        options.setdefault("port", 0)
        path = Path(procfile)
        if not path.is_absolute():
            path = request.config.rootpath / path
        return _used_by(_item(request), pool.start(
            {"procfile": path, **options}, tmp_path_factory.mktemp("devcluster"),
            lambda c: request.addfinalizer(c.down)))

    yield factory


@pytest.fixture(scope=_scope)
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> PluginCluster:
    """A ready cluster from the ini options or the test's ``devcluster`` marker.

    ``scope`` (marker) or ``devcluster_scope`` (ini) keeps it for the module or the
    session; a session cluster under pytest-xdist is shared by every worker.
    """
    item = _item(request)
    opts = _options(request.config, item.get_closest_marker("devcluster") if item else None)
    scope = str(opts.pop("scope", None) or request.scope)
    if item is None:  # the fixture itself is module- or session-scoped (ini)
        scope = request.scope
    return _used_by(item, _pool(request.config).get(request, opts, scope, tmp_path_factory))


# -- what happened during a test -------------------------------------------------------

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_STARTED] = time.time()
    item.config.stash[_CURRENT] = item.nodeid
    try:
        return (yield)
    finally:
        # Calls made by fixtures while setting up are not the test's.
        item.stash[_CALLS_BEFORE] = {id(c): c.calls() for c in _clusters_of(item)}


def _clusters_of(item: pytest.Item) -> list[PluginCluster]:
    stashed: list[PluginCluster] = item.stash.get(_CLUSTERS, [])
    found = list(stashed)
    value = getattr(item, "funcargs", {}).get("cluster")
    # A module/session cluster of this plugin set up before this test (a test's own
    # fixture named `cluster` may be a plain devcluster.Cluster: it records no calls).
    if value is not None and hasattr(value, "calls") and value not in found:
        found.append(value)
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Give a failing test's report a ``devcluster`` section per cluster it used."""
    report: pytest.TestReport = yield
    if report.failed:
        from devcluster.pytest_plugin.report import section

        t0 = item.stash.get(_STARTED, time.time())
        before = item.stash.get(_CALLS_BEFORE, {})
        for used in _clusters_of(item):
            try:
                report.sections.append(section(used, t0, before.get(id(used), {})))
            except Exception as e:  # a report aid must not hide the test's own failure
                report.sections.append((f"devcluster: {used.procfile}",
                                        f"(could not build the report: {e!r})"))
    return report


# -- xdist: the controller shares the run's directory and cleans up at the end -----------

@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: tell each worker where the run's shared clusters live."""
    config: pytest.Config = node.config
    if not config.getini("devcluster_share"):
        return
    if _RUN not in config.stash:
        from devcluster.pytest_plugin.sharing import SharedRun, sweep_stale

        run = SharedRun.of(node.workerinput["testrunuid"])
        run.mark_controller()
        sweep_stale(keep=run)
        config.stash[_RUN] = run
    node.workerinput[_RUN_DIR] = str(config.stash[_RUN].root)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """xdist controller: collect the leaks a worker found."""
    from devcluster.pytest_plugin.leaks import Leak

    found = getattr(node, "workeroutput", {}).get(_WORKER_LEAKS, [])
    node.config.stash[_LEAKS].extend(Leak.from_dict(d) for d in found)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The leak guard (fixtures are torn down by now); the xdist controller also stops
    the run's shared clusters, whatever happened to the workers."""
    config = session.config
    grace = float(str(config.getini("devcluster_grace")))
    leaks: list[Leak] = []
    if _RUN in config.stash:  # the xdist controller
        leaks = config.stash[_RUN].finish(grace)
    if _MEMBER in config.stash:  # an xdist worker: the last one stops the shared clusters
        config.stash[_MEMBER].leave(grace)
    if _POOL in config.stash:
        leaks += config.stash[_POOL].leaks()
    else:  # no fixture used; a test may still have started a Cluster of its own
        from devcluster.pytest_plugin.leaks import find_leaks, spawned_supervisors

        leaks += find_leaks({}, spawned_supervisors())
    if leaks:
        from devcluster.pytest_plugin.leaks import kill

        kill(leaks)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput[_WORKER_LEAKS] = [leak.to_dict() for leak in leaks]
        return
    config.stash[_LEAKS].extend(leaks)
    if config.stash[_LEAKS] and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    """xdist controller, last resort (a session that never finished): stop the run's
    shared clusters, so nothing outlives the run."""
    if _RUN in config.stash:
        leaks = config.stash[_RUN].finish(float(str(config.getini("devcluster_grace"))))
        if leaks:
            from devcluster.pytest_plugin.leaks import kill

            kill(leaks)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    leaks = config.stash.get(_LEAKS, [])
    if not leaks:
        return
    terminalreporter.section("devcluster leak guard", sep="=", red=True, bold=True)
    for leak in leaks:
        terminalreporter.write_line(f"devcluster: still running at the end of the session, "
                                    f"killed: {leak.describe()}", red=True)
    terminalreporter.write_line("devcluster: stop every cluster you start: `with Cluster(...)`, "
                                "or the `cluster` / `devcluster` fixtures")
