"""What ``devcluster up`` asks of the supervisor, and what the supervisor answers.

:class:`UpRequest` is the one owner of the daemon's settings: the launcher writes it
(:meth:`UpRequest.to_json`, on the daemon's stdin), the daemon reads it back
(:meth:`UpRequest.from_json`) and foreground ``up`` builds it directly. :class:`ReadyReport`
is the daemon's one-line answer on the ready pipe.

:func:`boot_view` is the daemon's very first read (:mod:`devcluster.supervisor.preboot`,
before its own imports): only what launching fork servers early needs, read with the
stdlib and the same field names, because parsing the per-type settings properly costs
the imports of :mod:`devcluster.config.plan` (~50 ms of TOML and diff machinery) on the
path to the first spawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from devcluster import defaults

if TYPE_CHECKING:
    from devcluster.config.policy import Policy
    from devcluster.config.project import Flags, TypeSettings


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class UpRequest:
    """Everything ``devcluster up`` was asked for (flags over ``devcluster.toml``)."""

    procfile: Path
    state_dir: Path
    env_files: tuple[Path, ...] = ()
    scale: Mapping[str, int] = field(default_factory=_frozen)
    base_port: int = defaults.BASE_PORT
    grace: float = defaults.GRACE
    ready_timeout: float = defaults.READY_TIMEOUT
    restart: Mapping[str, Policy] = field(default_factory=_frozen)
    ready_fd: int | None = None
    """A pipe to write one JSON line to once every instance has settled (``up -d``)."""
    registry: str | None = None
    """``etcd://host:port/prefix`` to register into etcd; None: the state dir's file."""
    lock_fd: int | None = None
    """The state dir's lock file, already locked by the process that started us."""
    lifeline_fd: int | None = None
    """A pipe whose other end the starting process holds: EOF (it exited, however it
    died) shuts the cluster down gracefully. Unlike PDEATHSIG it is not tied to the
    thread that started us."""
    watch: tuple[Path, ...] | None = None
    """``up --watch``: reload when these change (empty: the Procfile's directory)."""
    console: bool = False
    """Serve the web console for as long as the cluster runs (``up -d --console``)."""
    console_port: int = 0
    """The console's port on 127.0.0.1; 0: a free one."""
    config: Path | None = None
    """The ``devcluster.toml`` these settings were read from (None: no file)."""
    types: Mapping[str, TypeSettings] = field(default_factory=_frozen)
    """Per process type, flags over the file (:func:`devcluster.config.project.resolve`). A type
    not here runs with the settings above and the default readiness probe."""
    waves: tuple[tuple[str, ...], ...] = ()
    """Start order from ``depends_on``: () starts every type at once."""
    flags: Flags | None = None
    """What the flags said, apart from the file (a reload puts them over the edited
    ``devcluster.toml`` again); None: no flag is known, the values above stand."""
    log_max: int = defaults.LOG_MAX
    """The cap of the supervisor's own log (``[cluster]``; each type's is in ``types``)."""
    log_keep: int = defaults.LOG_KEEP

    def __post_init__(self) -> None:
        # Callers pass lists and dicts (the CLI, the API): store read-only copies, so a
        # request never changes under the supervisor that holds it.
        fix = object.__setattr__
        fix(self, "env_files", tuple(Path(p) for p in self.env_files))
        fix(self, "scale", _frozen(self.scale))
        fix(self, "restart", _frozen(self.restart))
        fix(self, "types", _frozen(self.types))
        fix(self, "waves", tuple(tuple(w) for w in self.waves))
        if self.watch is not None:
            fix(self, "watch", tuple(Path(p) for p in self.watch))

    def to_json(self) -> str:
        """One JSON object (the daemon's stdin): :meth:`from_json` gives this back."""
        from devcluster.config.plan import flags_to_json, types_to_json

        return json.dumps({
            "procfile": str(self.procfile), "state_dir": str(self.state_dir),
            "env_files": [str(p) for p in self.env_files], "scale": dict(self.scale),
            "base_port": self.base_port, "grace": self.grace,
            "ready_timeout": self.ready_timeout,
            "restart": {k: v.value for k, v in self.restart.items()},
            "ready_fd": self.ready_fd, "registry": self.registry, "lock_fd": self.lock_fd,
            "lifeline_fd": self.lifeline_fd,
            "watch": None if self.watch is None else [str(p) for p in self.watch],
            "console": self.console, "console_port": self.console_port,
            "config": None if self.config is None else str(self.config),
            "types": types_to_json(self.types), "waves": [list(w) for w in self.waves],
            "flags": None if self.flags is None else flags_to_json(self.flags),
            "log_max": self.log_max, "log_keep": self.log_keep})

    @classmethod
    def from_json(cls, text: str | bytes) -> UpRequest:
        """The request :meth:`to_json` wrote (KeyError/ValueError when it is not one)."""
        from devcluster.config.plan import flags_from_json, types_from_json
        from devcluster.config.policy import Policy

        raw = json.loads(text)
        return cls(
            procfile=Path(raw["procfile"]), state_dir=Path(raw["state_dir"]),
            env_files=tuple(Path(p) for p in raw.get("env_files", ())),
            scale={k: int(v) for k, v in raw.get("scale", {}).items()},
            base_port=int(raw["base_port"]), grace=float(raw["grace"]),
            ready_timeout=float(raw["ready_timeout"]),
            restart={k: Policy(v) for k, v in raw.get("restart", {}).items()},
            ready_fd=raw.get("ready_fd"), registry=raw.get("registry"),
            lock_fd=raw.get("lock_fd"), lifeline_fd=raw.get("lifeline_fd"),
            watch=None if raw.get("watch") is None else tuple(Path(p) for p in raw["watch"]),
            console=bool(raw.get("console", False)),
            console_port=int(raw.get("console_port", 0)),
            config=Path(raw["config"]) if raw.get("config") else None,
            types=types_from_json(raw.get("types", {})),
            waves=tuple(tuple(w) for w in raw.get("waves", ())),
            flags=None if raw.get("flags") is None else flags_from_json(raw["flags"]),
            log_max=int(raw.get("log_max", defaults.LOG_MAX)),
            log_keep=int(raw.get("log_keep", defaults.LOG_KEEP)))


@dataclass(frozen=True)
class PreloadedType:
    """One preloaded type as :func:`boot_view` reads it (``types`` of the request)."""

    preload: tuple[str, ...]
    env: Mapping[str, str]
    grace: float


@dataclass(frozen=True)
class BootView:
    """The part of an :class:`UpRequest` that launching fork servers early needs."""

    procfile: Path
    state_dir: Path
    env_files: tuple[Path, ...]
    scale: Mapping[str, int]
    base_port: int
    registry: str | None
    preloaded: Mapping[str, PreloadedType]
    depends: bool
    """Some type waits on ``depends_on`` (nothing may start ahead)."""


def boot_view(text: str | bytes) -> BootView:
    """Read :meth:`UpRequest.to_json`'s text with the stdlib only (see the module)."""
    raw = json.loads(text)
    types: Mapping[str, Mapping[str, Any]] = raw.get("types", {})
    return BootView(
        procfile=Path(raw["procfile"]), state_dir=Path(raw["state_dir"]),
        env_files=tuple(Path(p) for p in raw.get("env_files", ())),
        scale={k: int(v) for k, v in raw.get("scale", {}).items()},
        base_port=int(raw["base_port"]), registry=raw.get("registry"),
        preloaded={name: PreloadedType(tuple(t["preload"]), dict(t.get("env", {})),
                                       float(t["grace"]))
                   for name, t in types.items() if t.get("preload")},
        depends=any(t.get("depends_on") for t in types.values()))


@dataclass(frozen=True)
class ReadyReport:
    """The daemon's one line on the ready pipe: what it started, or why it could not."""

    instances: Mapping[str, Mapping[str, Any]] = field(default_factory=_frozen)
    """Every instance by name, in :class:`devcluster.schema.InstanceInfo`'s JSON shape."""
    notes: tuple[str, ...] = ()
    """What the user should know (stale state cleaned, the console's URL)."""
    stopped_by: str | None = None
    """Who asked for a shutdown while it started (None: nobody)."""
    error: Mapping[str, Any] | None = None
    """:func:`devcluster.errors.to_payload` of what stopped start-up (None: it started)."""

    def to_json(self) -> str:
        """One line of JSON, without its newline."""
        if self.error is not None:
            return json.dumps({"error": dict(self.error)})
        return json.dumps({"instances": {k: dict(v) for k, v in self.instances.items()},
                           "notes": list(self.notes), "stopped_by": self.stopped_by})

    @classmethod
    def from_json(cls, text: str | bytes) -> ReadyReport:
        """The report :meth:`to_json` wrote."""
        raw = json.loads(text)
        if "error" in raw:
            return cls(error=dict(raw["error"]))
        return cls(instances={k: dict(v) for k, v in raw.get("instances", {}).items()},
                   notes=tuple(raw.get("notes", ())), stopped_by=raw.get("stopped_by"))
