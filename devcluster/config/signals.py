"""Signal names as users write them. A module of its own so that the command line can
check a ``--signal`` without importing asyncio and psutil (devcluster.supervisor.process does)."""

from __future__ import annotations

import signal

from devcluster.errors import UsageError


def parse_signal(value: str | int) -> signal.Signals:
    """``"KILL"``, ``"SIGKILL"``, ``"9"`` or ``9`` -> ``Signals.SIGKILL``."""
    text = str(value).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise UsageError(f"unknown signal {value!r}; use a name like SIGTERM or a number") from None
