"""The one JSON shape of an instance: ``ps --json``, ``up -d --json``, the control reply,
``Cluster.instances`` and the etcd view all build it here.

Every path gives the same keys in the same order. A value that is not known on a
path (the CPU of an instance another machine runs, the weight when the registry is
unreadable) is ``None`` (JSON ``null``), never a placeholder such as 0 or 1.

>>> InstanceInfo.from_dict({"name": "greeter.2", "state": "stopped"}).to_dict()["pid"] is None
True
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

__all__ = ["RUNNING_STATES", "InstanceInfo", "process_type_of", "uptime"]

#: States with a process behind them (``devcluster.registry.State.running``), as strings:
#: this module is read by every path, the etcd view included, and imports nothing.
RUNNING_STATES = frozenset({"starting", "serving", "draining", "paused", "unhealthy"})


class _RecordLike(Protocol):
    """What :meth:`InstanceInfo.from_record` reads of a registry record (read-only)."""

    @property
    def name(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...
    @property
    def state(self) -> object: ...


def process_type_of(name: str) -> str:
    """``greeter.2`` -> ``greeter``; ``server1`` -> ``server1`` (honcho's naming)."""
    head, dot, number = name.rpartition(".")
    return head if dot and head and number.isdigit() else name


def uptime(state: str, started_at: float | None, now: float | None = None) -> float | None:
    """Seconds the current process has run; None when no process runs."""
    if state not in RUNNING_STATES or not started_at:
        return None
    return round(max(0.0, (time.time() if now is None else now) - started_at), 3)


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as every command and the Python API show it (see :meth:`to_dict`)."""

    name: str
    """Instance name: ``server1``, ``greeter.2``."""
    service: str = ""
    """Process type without trailing digits; what clients select by."""
    process_type: str = ""
    """The Procfile line it comes from."""
    state: str = "stopped"
    """starting, serving, unhealthy, draining, stopped, exited, killed, backoff, failed,
    paused (``devcluster.registry.State``)."""
    pid: int | None = None
    """The process devcluster started last (leader of its group); None if none yet."""
    address: str | None = None
    """``127.0.0.1:PORT`` clients call; None until known."""
    port: int | None = None
    """The port of ``address``; None until known."""
    weight: int | None = None
    """Registry weight 0..1000; None when the registry could not be read."""
    enabled: bool | None = None
    """Registry flag; None when the registry could not be read."""
    restarts: int = 0
    """Starts after the first, by policy or by command."""
    uptime_s: float | None = None
    """Seconds the current process has run; None when none runs."""
    cpu_percent: float | None = None
    """CPU % of the process since the last look; None when not measured here."""
    rss_bytes: int | None = None
    """Resident memory of the process; None when not measured here."""
    uss_bytes: int | None = None
    """Memory unique to the process; None when not measured here."""
    last_exit: str | None = None
    """How the last process ended (``exit 1``, ``signal SIGKILL``); None if none ended."""
    started_at: float | None = None
    """Unix time the current (or last) process started; None if never started."""
    metadata: dict[str, str] | None = None
    """Registry labels (``zone=a``) clients select by; None when the registry could not
    be read."""
    ready: str | None = None
    """How the current process was found ready: ``health check``, ``TCP connect`` (a
    server without the health service), or the probe of devcluster.toml (``health of
    'echo.Echo': SERVING``, ``GET /healthz: 200``...); None when not known or not yet."""

    fault: str | None = None
    """The fault injected into the calls it serves (``devcluster fault``), described:
    ``delay 200ms 50%, abort UNAVAILABLE 10%``; None: none (or registry unread)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the documented order."""
        return asdict(self)

    # -- the old dict rows, deprecated -----------------------------------------------
    # ``Cluster.ps()`` and its verbs returned ``ps --json`` dicts before they returned
    # InstanceInfo; scripts that index them (``row["state"]``) keep working, warned.

    def __getitem__(self, key: str) -> Any:
        """``info["state"]``: deprecated, use ``info.state`` (or ``info.to_dict()``)."""
        _warn_dict_use(f'info[{key!r}]', f"info.{key}")
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``info.get("pid")``: deprecated, use ``info.pid``."""
        _warn_dict_use(f"info.get({key!r})", f"info.{key}")
        return getattr(self, key) if key in _FIELD_NAMES else default

    def __iter__(self) -> Iterator[str]:
        """``for key in info`` / ``sorted(info)``: the JSON keys, as a dict row gave them;
        deprecated, use :meth:`to_dict`."""
        _warn_dict_use("iterating an instance", "info.to_dict()")
        return iter(_FIELD_NAMES)

    def __len__(self) -> int:
        """``len(info)``, as a dict row gave it: the number of JSON keys; deprecated."""
        _warn_dict_use("len(info)", "len(info.to_dict())")
        return len(_FIELD_NAMES)

    def __bool__(self) -> bool:
        # An instance is always true; without this, truth would go through __len__ (and warn).
        return True

    def keys(self) -> list[str]:
        """The JSON keys (so ``dict(info)`` still works): deprecated, use :meth:`to_dict`."""
        _warn_dict_use("info.keys() / dict(info)", "info.to_dict()")
        return list(_FIELD_NAMES)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InstanceInfo:
        """Read :meth:`to_dict`'s output back (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_record(cls, record: _RecordLike, now: float | None = None) -> InstanceInfo:
        """A registry record (e.g. from etcd): no process stats, no exit history."""
        state = str(getattr(record.state, "value", record.state))
        _, _, port = record.address.rpartition(":")
        return cls(
            name=record.name, service=record.service,
            process_type=process_type_of(record.name), state=state,
            pid=record.pid,
            address=record.address or None, port=int(port) if port.isdigit() else None,
            weight=record.weight, enabled=record.enabled, restarts=record.restarts,
            uptime_s=uptime(state, record.started_at, now), started_at=record.started_at,
            metadata=dict(record.metadata),
            fault=fault.describe() if (fault := getattr(record, "fault", None)) else None)



#: InstanceInfo's JSON keys in order (what the deprecated dict access accepts).
_FIELD_NAMES = tuple(f.name for f in fields(InstanceInfo))


def _warn_dict_use(old: str, new: str) -> None:
    # stacklevel 3: the line of the script that indexed the row, not this module.
    warnings.warn(f"{old}: instances are InstanceInfo objects now, not dicts; use {new}",
                  DeprecationWarning, stacklevel=3)
