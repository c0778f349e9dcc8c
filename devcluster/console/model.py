"""What ``top`` and the console show, and what they can do: one live view of a cluster.

The rows are ``ps --json`` dicts. They come from three sources, each at its own pace:

- the supervisor's ``ps`` (control plane): the whole truth, but ~1 ms per instance
  (it reads each process's memory map), so it is asked on registry changes, after an
  action and every :data:`FULL_REFRESH` seconds, never on a fast timer;
- the registry snapshot, pushed on every change: merged at once into the last rows,
  so a weight or state change shows without waiting for ``ps``;
- a cheap local sample (psutil: CPU%, RSS, stopped = paused) and the client statistics
  (:mod:`devcluster.client.stats`), on the views' own tick.

Every place that turns state into a row is in this module, so that moving to the
project's instance schema type changes this file only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from devcluster import defaults
from devcluster.client.stats import read_traffic
from devcluster.control.access import control_client, instance_dict
from devcluster.errors import DevclusterError, NoClusterError, UnknownInstanceError, UsageError
from devcluster.registry import Record, Registry, Snapshot, State, open_registry, registry_spec
from devcluster.registry.record import parse_weight

if TYPE_CHECKING:
    from devcluster.control.plane import ControlClient

#: Seconds between two full ``ps`` refreshes when nothing else asks for one.
FULL_REFRESH = 10.0
#: Actions on one instance that go to the supervisor.
CONTROL_ACTIONS = ("kill", "stop", "start", "restart", "pause", "resume")
#: Actions on one instance that write the registry (they work without a supervisor).
REGISTRY_ACTIONS = ("enable", "disable")
ACTIONS = CONTROL_ACTIONS + REGISTRY_ACTIONS


class UnknownActionError(UsageError):
    """An action name that is not one of :data:`ACTIONS`."""

    def __init__(self, action: str) -> None:
        super().__init__(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")


# -- rows: the one place that knows the row's shape ---------------------------------------

def row_from_control(inst: Any) -> dict[str, Any]:
    """A control-plane Instance as a row (``ps --json``)."""
    return instance_dict(inst)


def row_from_record(rec: Record, now: float | None = None) -> dict[str, Any]:
    """A registry record of an instance no local supervisor runs (another machine's)."""
    now = time.time() if now is None else now
    port = rec.address.rpartition(":")[2] if rec.address else ""
    return {
        "name": rec.name, "service": rec.service, "process_type": rec.name.split(".")[0],
        "state": rec.state.value, "pid": rec.pid, "address": rec.address or None,
        "port": int(port) if port.isdigit() else None, "weight": rec.weight,
        "enabled": rec.enabled, "restarts": rec.restarts,
        "uptime_s": round(now - rec.started_at, 3) if rec.started_at and rec.state.running
        else 0.0,
        "cpu_percent": None, "rss_bytes": None, "uss_bytes": None, "last_exit": None,
        "started_at": rec.started_at, "metadata": dict(rec.metadata),
        "fault": rec.fault.describe() if rec.fault else None,
    }


def merge_record(row: dict[str, Any], rec: Record) -> dict[str, Any]:
    """``row`` with what the registry knows newer: weight, enabled, state, process."""
    merged = {**row, "weight": rec.weight, "enabled": rec.enabled, "restarts": rec.restarts,
              "fault": rec.fault.describe() if rec.fault else None}
    # The registry keeps advertising a paused instance as serving (pause is a fault the
    # clients must find out about): only ps, or the process's stopped status, says paused.
    if not (row["state"] == State.PAUSED.value and rec.state is State.SERVING):
        merged["state"] = rec.state.value
    if rec.pid != row["pid"]:
        merged.update(pid=rec.pid, started_at=rec.started_at, cpu_percent=None,
                      rss_bytes=None, uss_bytes=None)
    if rec.address:
        merged["address"] = rec.address
    return merged


def stable_part(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What of the rows a viewer must be told about (uptime moves by itself)."""
    return [tuple(v for k, v in r.items() if k != "uptime_s") for r in rows]


# -- the view ---------------------------------------------------------------------------

class ClusterView:
    """The live rows of one cluster, and the actions ``top`` and the console offer.

    Thread-safe: the console refreshes from worker threads while its loop reads.

    >>> view = ClusterView(Path(".devcluster"))       # doctest: +SKIP
    >>> view.refresh(); [r["name"] for r in view.rows()]   # doctest: +SKIP
    ['server1', 'server2']
    """

    def __init__(self, state_dir: Path, registry: str | Registry | None = None) -> None:
        self.state_dir = Path(state_dir)
        if isinstance(registry, Registry):
            self.registry, self._owns_registry = registry, False
        else:
            self.registry = open_registry(registry_spec(registry, self.state_dir))
            self._owns_registry = True
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._ps_rows: dict[str, dict[str, Any]] = {}
        self._registered: frozenset[str] = frozenset()
        self._traffic: dict[str, dict[str, Any]] = {}
        self._procs: dict[int, psutil.Process] = {}
        #: Every process type seen in a row: a type scaled to 0 has no rows left.
        self._types: set[str] = set()
        self._control: ControlClient | None = None
        self._control_lock = threading.Lock()
        self.revision: int | None = None
        self.last_full = 0.0
        #: Why the supervisor could not be asked (None: it answered), for the views.
        self.supervisor_note: str | None = None

    def __repr__(self) -> str:
        return f"<ClusterView {self.state_dir} revision={self.revision} rows={len(self._rows)}>"

    def close(self) -> None:
        self._drop_control()
        if self._owns_registry:
            self.registry.close()

    # -- reading ---------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The rows now, by name; ``uptime_s`` computed at this moment."""
        now = time.time()
        with self._lock:
            rows = [dict(r) for _, r in sorted(self._rows.items())]
        for r in rows:
            if r.get("started_at") and r["state"] in _RUNNING_STATES:
                r["uptime_s"] = round(now - r["started_at"], 3)
        return rows

    def traffic(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._traffic)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._rows)

    def process_types(self) -> list[str]:
        """Every process type seen, those scaled to 0 included (the supervisor may know
        more: the console started after a type went to 0 never saw it)."""
        with self._lock:
            return sorted(self._types | {r["process_type"] for r in self._rows.values()})

    def _client(self) -> ControlClient:
        """The control client, built on first use (it waits for a starting supervisor's
        socket: right before an action, never on a refresh)."""
        with self._control_lock:
            if self._control is None:
                self._control = control_client(self.state_dir)
            return self._control

    def _ps(self) -> dict[str, dict[str, Any]] | None:
        """The supervisor's rows, or None when no supervisor answers in the state dir."""
        if self._control is None and not _socket_exists(self.state_dir):
            # The console may be started by the supervisor itself, before its control
            # socket: waiting for it here would delay the console's start (and `up -d
            # --console`) by the client's whole wait. The registry has the rows.
            self.supervisor_note = f"no supervisor answers in {self.state_dir} (yet)"
            return None
        try:
            reply = self._client().ps()
        except DevclusterError as e:  # NoClusterError included: etcd views work without
            self._drop_control()
            self.supervisor_note = str(e)
            return None
        self.supervisor_note = None
        return {i.name: row_from_control(i) for i in reply.instances}

    def _drop_control(self) -> None:
        with self._control_lock:
            control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(Exception):
                control.close()

    def refresh(self, snapshot: Snapshot | None = None) -> None:
        """Full refresh: the supervisor's ``ps`` and the registry (blocking, ~ms per row)."""
        snapshot = snapshot or self.registry.snapshot()
        ps = self._ps()
        with self._lock:
            if ps is not None:
                self._ps_rows = ps
                self._rows = dict(ps)
            self.last_full = time.monotonic()
        self.apply(snapshot)

    def apply(self, snapshot: Snapshot) -> None:
        """Merge a registry snapshot into the last rows at once (no supervisor call)."""
        now = time.time()
        with self._lock:
            rows: dict[str, dict[str, Any]] = {}
            for name, rec in snapshot.records.items():
                base = self._rows.get(name) or self._ps_rows.get(name) \
                    or row_from_record(rec, now)
                rows[name] = merge_record(base, rec)
            gone = set(self._registered) - set(snapshot.records)
            for name in gone:  # deregistered (scaled down): the last ps is out of date
                self._ps_rows.pop(name, None)
            for name, row in self._ps_rows.items():  # known to the supervisor only
                if name not in rows:
                    rows[name] = self._rows.get(name, row)
            self._rows = rows
            self._types.update(r["process_type"] for r in rows.values())
            self._registered = frozenset(snapshot.records)
            self.revision = snapshot.revision

    def sample(self) -> None:
        """The cheap tick: CPU%, RSS and paused from psutil, and the client statistics.

        Only processes of the local supervisor are sampled: a pid in an etcd record of
        another machine names some unrelated process here.
        """
        traffic = {n: t.to_dict() for n, t in read_traffic(self.state_dir).items()}
        with self._lock:
            pids = {r["pid"] for n, r in self._rows.items() if r.get("pid") and n in self._ps_rows}
        measured = {pid: _measure(self._procs, pid) for pid in pids}
        for pid in set(self._procs) - pids:
            del self._procs[pid]
        with self._lock:
            self._traffic = traffic
            for name, row in self._rows.items():
                m = measured.get(row.get("pid"))
                if m is None:
                    continue
                cpu, rss, stopped = m
                state = row["state"]
                if stopped and state == State.SERVING.value:
                    state = State.PAUSED.value
                elif not stopped and state == State.PAUSED.value:
                    state = State.SERVING.value
                self._rows[name] = {**row, "cpu_percent": cpu, "rss_bytes": rss, "state": state}

    # -- acting ----------------------------------------------------------------------

    def act(self, name: str, action: str) -> list[dict[str, Any]]:
        """One action on one instance; returns the rows it changed (refreshed)."""
        if action not in ACTIONS:
            raise UnknownActionError(action)
        self._known(name)
        if action in REGISTRY_ACTIONS:
            self.registry.update(name, enabled=action == "enable")
        else:
            self._control_call(lambda c: c.act(action, [name], wait=False))
        self.refresh()
        return [r for r in self.rows() if r["name"] == name]

    def _control_call(self, call: Callable[[ControlClient], object]) -> None:
        """``call`` on the control client; a client that failed to reach the supervisor
        is dropped, so that the next call builds a fresh one."""
        try:
            call(self._client())
        except NoClusterError:
            self._drop_control()
            raise

    def set_weight(self, name: str, weight: str | int) -> dict[str, Any]:
        """Write an instance's weight (an integer 0..1000) to the registry."""
        value = parse_weight(weight)
        self._known(name)
        self.registry.update(name, weight=value)
        self.apply(self.registry.snapshot())
        return next(r for r in self.rows() if r["name"] == name)

    def scale(self, process_type: object, count: object) -> list[dict[str, Any]]:
        """Grow or shrink one process type (without waiting for new instances to serve)."""
        if not isinstance(process_type, str) or not process_type:
            raise UsageError("scale needs a process type, e.g. {\"type\": \"greeter\", "
                             "\"count\": 3}")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 100:
            raise UsageError(f"count must be an integer 0..100, got {count!r}")
        self._control_call(lambda c: c.scale({process_type: count}, wait=False))
        self.refresh()
        return [r for r in self.rows() if r["process_type"] == process_type]

    def _known(self, name: str) -> None:
        known = self.names()
        if name not in known:
            self.refresh()
            known = self.names()
        if name not in known:
            raise UnknownInstanceError(name, known)


_RUNNING_STATES = frozenset(s.value for s in State if s.running)


def _socket_exists(state_dir: Path) -> bool:
    path = defaults.layout(state_dir).socket
    return path.exists() or path.is_symlink()


def _measure(procs: dict[int, psutil.Process], pid: int) -> tuple[float, int, bool] | None:
    """(CPU % since the last sample, RSS, stopped) of ``pid``; None if not ours to see."""
    proc = procs.get(pid)
    try:
        if proc is None:
            proc = procs[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # the first call only sets the baseline
        with proc.oneshot():
            cpu = proc.cpu_percent(None)
            rss = proc.memory_info().rss
            stopped = proc.status() == psutil.STATUS_STOPPED
    except psutil.Error:
        procs.pop(pid, None)
        return None
    return round(cpu, 1), rss, stopped
