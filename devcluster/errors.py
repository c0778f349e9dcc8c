"""The one exception tree of devcluster.

Every error a user can cause is a :class:`DevclusterError` whose message names the
bad value and the fix, in one line. Only the CLI (``devcluster.cli``) turns them
into exit codes: ``exit_code`` 2 for usage mistakes, 1 for runtime failures.
Between processes (the background supervisor telling ``up -d`` why it could not
start) an error travels as data: :func:`to_payload` and :func:`from_payload`.

This module is a leaf: it imports nothing of ours, so every piece (the registry
included) may raise from this tree.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ClusterRunningError",
    "CorruptRegistryError",
    "DevclusterError",
    "NoClusterError",
    "NotReadyError",
    "ProcfileError",
    "RegistryError",
    "UnknownInstanceError",
    "UsageError",
    "from_payload",
    "to_payload",
]


class DevclusterError(Exception):
    """Base of every error devcluster reports to a user (runtime failure, exit 1)."""

    exit_code = 1
    #: The instance the error is about, when there is one.
    instance: str | None = None
    #: Last lines of the log that explain it (e.g. of the instance), oldest first.
    log: tuple[str, ...] = ()


class NotReadyError(DevclusterError):
    """Instances asked to serve (``up``, ``start``, ``restart``, ``scale``) ended without
    serving; the cluster keeps running. ``states``: each instance's row, by name."""

    states: dict[str, dict[str, Any]] = {}  # an error rebuilt from its payload has none

    def __init__(self, message: str, states: dict[str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.states = states


class UsageError(DevclusterError):
    """The user asked for something malformed: a bad flag value, an unknown name."""

    exit_code = 2


class ProcfileError(UsageError):
    """The Procfile or an env file is missing, empty or malformed."""


class UnknownInstanceError(DevclusterError):
    """A command named an instance or process type the cluster does not have.

    The world disagrees with a well-formed name (exit 1); a malformed name (a path,
    ``../x``) is a UsageError (exit 2) before anything is looked up.
    """

    def __init__(self, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.name = name
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "none"
        super().__init__(f"unknown instance {name!r}; known instances: {listed}")


class RegistryError(DevclusterError):
    """The registry could not be read or written."""


class CorruptRegistryError(RegistryError):
    """The registry file is not valid JSON of the expected schema."""


class NoClusterError(DevclusterError):
    """No supervisor answers on the control socket of this state dir."""


class ClusterRunningError(DevclusterError):
    """A second ``up`` was asked for where a cluster already runs."""


def to_payload(e: BaseException, instance: str | None = None,
               log: Sequence[str] = ()) -> dict[str, Any]:
    """``e`` as JSON-ready data: type, message, exit code, instance, last log lines.

    An error that is not ours (a bug) keeps its type name, and its traceback's last
    lines become the log, so the caller can say what happened without a traceback.
    """
    ours = isinstance(e, DevclusterError)
    lines = list(log) or list(getattr(e, "log", ()))
    if not ours and not lines:
        lines = "".join(traceback.format_exception(e)).rstrip().splitlines()[-5:]
    return {"type": type(e).__name__, "message": str(e),
            "exit_code": e.exit_code if isinstance(e, DevclusterError) else 1,
            "instance": instance or getattr(e, "instance", None), "log": lines}


def from_payload(data: Mapping[str, Any]) -> DevclusterError:
    """The error :func:`to_payload` described, as the same class when it is one of ours."""
    name, message = str(data.get("type", "")), str(data.get("message", ""))
    cls = _ours().get(name)
    if cls is None:  # not ours: a bug in the supervisor; say so in one line
        error = DevclusterError(f"the supervisor failed: {name}: {message}")
    else:
        error = cls.__new__(cls)
        Exception.__init__(error, message)
    error.instance = data.get("instance")
    error.log = tuple(str(line) for line in data.get("log") or ())
    return error


def _ours() -> dict[str, type[DevclusterError]]:
    found: dict[str, type[DevclusterError]] = {}
    todo: list[type[DevclusterError]] = [DevclusterError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found
