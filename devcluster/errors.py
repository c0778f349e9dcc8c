"""The one exception tree of devcluster.

Every error a user can cause is a :class:`DevclusterError` whose message names the
bad value and the fix, in one line. Only ``cli.py`` turns them into exit codes:
``exit_code`` 2 for usage mistakes, 1 for runtime failures.

This module is a leaf: it imports nothing of ours, so every piece (the registry
included) may raise from this tree.
"""

from __future__ import annotations


class DevclusterError(Exception):
    """Base of every error devcluster reports to a user (runtime failure, exit 1)."""

    exit_code = 1


class UsageError(DevclusterError):
    """The user asked for something malformed: a bad flag value, an unknown name."""

    exit_code = 2


class ProcfileError(UsageError):
    """The Procfile or an env file is missing, empty or malformed."""


class UnknownInstanceError(UsageError):
    """A command named an instance or process type the cluster does not have."""

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
