"""The ``devcluster`` console script (and ``python -m devcluster``): check the platform,
then run the command line.

The check comes before any import of the CLI, whose modules need fcntl and process
groups at import time: on a platform without them the user gets one line, not a
traceback from deep inside an import."""

from __future__ import annotations

import os
import sys


def missing_posix() -> str | None:
    """What this platform lacks of what devcluster needs, or None."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return "fcntl locks"
    if not (hasattr(os, "killpg") and hasattr(os, "setsid")):
        return "process groups"
    return None


def main() -> None:
    """Run ``sys.argv`` and exit with its status (see :mod:`devcluster.cli.runner`)."""
    lacking = missing_posix()
    if lacking:
        print(f"devcluster: error: this platform ({sys.platform}) lacks {lacking}, which "
              "devcluster needs; run it on Linux or macOS (on Windows: in WSL)", file=sys.stderr)
        sys.exit(1)
    try:
        from devcluster.cli.runner import run
    except KeyboardInterrupt:  # Ctrl-C while the command line loads: interrupted, no traceback
        sys.exit(130)
    sys.exit(run(sys.argv[1:]))
