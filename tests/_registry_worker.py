"""A separate process that writes a FileRegistry, for the registry's cross-process tests.

    python tests/_registry_worker.py stress STATE_DIR NAME COUNT
        print "ready", wait for a line on stdin, then COUNT times increment (in one
        read-modify-write each) ``restarts`` of the record ``shared`` and of NAME.
    python tests/_registry_worker.py bump STATE_DIR NAME
        increment ``restarts`` of NAME once and print the new revision.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from devcluster.registry.file import FileRegistry
from devcluster.registry.record import Snapshot


def increments(*names: str) -> Any:
    """A ``modify`` callback adding 1 to ``restarts`` of each of ``names``."""

    def decide(current: Snapshot) -> Mapping[str, Mapping[str, Any]]:
        return {n: {"restarts": current.records[n].restarts + 1} for n in names}

    return decide


def main(argv: list[str]) -> int:
    mode, state_dir, name, *rest = argv
    reg = FileRegistry(state_dir, check_liveness=False)
    if mode == "stress":
        count = int(rest[0])
        print("ready", flush=True)
        sys.stdin.readline()  # start together with the other workers
        bump = increments("shared", name)
        for _ in range(count):
            reg.modify(bump)
        return 0
    if mode == "bump":
        print(reg.modify(increments(name)).revision, flush=True)
        return 0
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
