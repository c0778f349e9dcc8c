"""Restart policies (a leaf module: the CLI parses them without importing the supervisor)."""

from __future__ import annotations

import enum


class Policy(enum.StrEnum):
    """What to do when an instance exits by itself."""

    NO = "no"
    """Never restart."""
    ON_FAILURE = "on-failure"
    """Restart after a non-zero exit or a death by signal (the default)."""
    ALWAYS = "always"
    """Restart after any exit, clean ones included."""
