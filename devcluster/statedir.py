"""The state dir's own files: the supervisor's lock and the control socket's path.

Kept apart from the supervisor so that commands which only look (``ps``, ``down``,
``up -d`` in its parent) do not import grpc and asyncio to find them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from devcluster.defaults import layout
from devcluster.errors import ClusterRunningError, DevclusterError


def socket_path(state_dir: Path) -> Path:
    return layout(state_dir).socket


@contextlib.contextmanager
def hold_lock(state_dir: Path) -> Iterator[IO[str]]:
    """Hold ``supervisor.lock`` for the supervisor's life; refuse if another holds it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        path = layout(state_dir).lock
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                              "pass --state-dir DIR with a directory you can write") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise ClusterRunningError(
            f"a cluster is already running in {state_dir} (supervisor pid {pid}); "
            "stop it with `devcluster down` or use another --state-dir") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield f
    finally:
        f.close()


def running_pid(state_dir: Path) -> int | None:
    """The pid of the supervisor holding the state dir's lock, else None."""
    path = layout(state_dir).lock
    try:
        with open(path, encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else -1
            return None
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as e:  # e.g. the state dir is a file
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                              "pass --state-dir DIR with a directory") from None
