"""The plugin's clusters: started on demand, kept for their scope, shared across xdist
workers for the session scope, and remembered for the leak guard."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.pytest_plugin.leaks import Leak, find_leaks, spawned_supervisors
from devcluster.pytest_plugin.recording import PluginCluster
from devcluster.pytest_plugin.sharing import SharedRun, options_key

SCOPES = ("function", "module", "session")


class Pool:
    """Every cluster this pytest process started or attached to."""

    def __init__(self, run: SharedRun | None = None,
                 who: Callable[[], str] = lambda: "test") -> None:
        #: The xdist run's shared clusters (workers only, when sharing is on).
        self.run = run
        #: Who asks for the verbs called on a cluster: the running test's node id.
        self.who = who
        self._cache: dict[tuple[str, ...], PluginCluster] = {}
        self._shared: list[PluginCluster] = []
        #: pid -> (create time, origin) of every process started for this session.
        self.tracked: dict[int, tuple[float | None, str]] = {}
        self._started: list[Path] = []  # state dirs of the clusters this process started

    def __repr__(self) -> str:
        return f"<Pool {len(self._cache)} kept clusters, {len(self.tracked)} pids, run={self.run}>"

    # -- making clusters ----------------------------------------------------------------

    def make(self, opts: dict[str, Any], **extra: Any) -> PluginCluster:
        opts = dict(opts)
        procfile = opts.pop("procfile")
        return PluginCluster(procfile, who=self.who, **opts, **extra)

    def start(self, opts: dict[str, Any], state_dir: Path,
              on_created: Callable[[PluginCluster], None]) -> PluginCluster:
        """Start a cluster of this process; ``on_created`` (its teardown) is registered
        before ``up()``: a half-started cluster is still stopped."""
        cluster = self.make(opts, state_dir=state_dir)
        self._started.append(state_dir)
        on_created(cluster)
        try:
            cluster.up()
        finally:
            self._track_supervisor(cluster)
        return cluster

    def _track_instances(self) -> None:
        """Every instance process the supervisors of our clusters started: the pids of
        their timelines' STARTED events, with the create time the registry recorded
        (psutil's, what the leak guard compares; the event's time where it has none)."""
        from devcluster.events import EventKind, read_events
        from devcluster.registry import FileRegistry

        for state_dir in self._started:
            created: dict[int, float | None] = {}
            with contextlib.suppress(Exception):  # no file registry (etcd), or unreadable
                snap = FileRegistry(state_dir, check_liveness=False).snapshot()
                created = {r.pid: r.started_at for r in snap.records.values() if r.pid}
            for e in read_events(state_dir):
                if e.kind is EventKind.STARTED and isinstance(e.new, int):
                    self.tracked.setdefault(e.new, (created.get(e.new) or e.time,
                                                    f"instance {e.instance} of the cluster "
                                                    f"in {state_dir}"))

    def _track_supervisor(self, cluster: PluginCluster) -> None:
        from devcluster.pytest_plugin.leaks import same_process
        from devcluster.statedir import running_pid

        pid = running_pid(cluster.state_dir)
        if pid and pid > 0 and (proc := same_process(pid, None)) is not None:
            with contextlib.suppress(Exception):
                self.tracked.setdefault(pid, (proc.create_time(), f"the supervisor of "
                                              f"{cluster.state_dir}"))

    # -- scopes -------------------------------------------------------------------------

    def get(self, request: pytest.FixtureRequest, opts: dict[str, Any], scope: str,
            tmp_path_factory: pytest.TempPathFactory) -> PluginCluster:
        """The cluster for ``opts`` in ``scope``: a new one, or the one kept for it."""
        if scope not in SCOPES:
            raise pytest.UsageError(f"devcluster: scope={scope!r} is not one of "
                                    f"{', '.join(SCOPES)}; fix the marker or devcluster_scope")
        if scope == "function":
            return self.start(opts, tmp_path_factory.mktemp("devcluster"),
                              lambda c: request.addfinalizer(c.down))
        owner = _owner(request, scope)
        key = (scope, owner.nodeid, options_key(opts))
        if key in self._cache:
            return self._cache[key]
        if scope == "session" and self.run is not None:
            cluster = self._attach_shared(opts, request.session)
        else:
            def forget() -> None:
                self._cache.pop(key, None)

            owner.addfinalizer(forget)  # runs after the cluster's own down (LIFO)
            cluster = self.start(opts, tmp_path_factory.mktemp("devcluster"),
                                 lambda c: owner.addfinalizer(c.down))
        self._cache[key] = cluster  # not when up() failed: the next test tries again
        return cluster

    # -- the xdist run's shared clusters ------------------------------------------------

    def _attach_shared(self, opts: dict[str, Any], session: pytest.Session) -> PluginCluster:
        """Attach to the run's cluster for ``opts``; start it if no worker has yet."""
        from devcluster.statedir import running_pid

        assert self.run is not None
        state_dir = self.run.state_dir(options_key(opts))
        with self.run.locked():
            cluster = self.make(opts, state_dir=state_dir, owned=False)
            cluster.shared = True
            if not self._shared:
                session.addfinalizer(self.detach_shared)
            self._shared.append(cluster)
            if running_pid(state_dir) is None:
                cluster.up()  # not tied to this worker's life: the last worker stops it
            else:
                _wait_serving(cluster)
        return cluster

    def detach_shared(self) -> None:
        """This worker is done with the run's clusters (they serve on for the others)."""
        shared, self._shared = self._shared, []
        for cluster in shared:
            cluster.detach()

    # -- the leak guard -----------------------------------------------------------------

    def leaks(self) -> list[Leak]:
        """Processes started for this session still alive (a shared cluster's are the
        controller's to judge: it may still serve other workers)."""
        exclude = [str(self.run.root)] if self.run is not None else []
        self._track_instances()
        return find_leaks(self.tracked, spawned_supervisors(), exclude)


def _owner(request: pytest.FixtureRequest, scope: str) -> pytest.Module | pytest.Session:
    """The node whose end ends a ``scope`` cluster."""
    if scope == "module" and isinstance(request.node, pytest.Item):
        module = request.node.getparent(pytest.Module)
        if module is not None:
            return module
    if scope == "module" and isinstance(request.node, pytest.Module):
        return request.node
    return request.session


def _wait_serving(cluster: PluginCluster) -> None:
    """An attached cluster serves (a worker that crashed while starting it left it
    starting): wait on the registry, not a timer."""
    from devcluster.api import NotReadyError
    from devcluster.registry import State

    def serving(snap: Any) -> bool:
        return bool(snap.records) and all(r.state is State.SERVING for r in snap.records.values())

    began = time.monotonic()
    try:
        cluster.wait_for(serving, timeout=cluster.ready_timeout)
    except TimeoutError:
        states = {r.name: {"state": r.state.value} for r in cluster.registry.snapshot().records.values()}
        bad = ", ".join(f"{n} {s['state']}" for n, s in states.items() if s["state"] != "serving")
        raise NotReadyError(f"the shared cluster in {cluster.state_dir} does not serve after "
                            f"{time.monotonic() - began:.0f}s: {bad}", states) from None
