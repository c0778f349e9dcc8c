"""Which commands can be preloaded, checked when ``devcluster.toml`` is loaded. Pure.

A type with ``preload = [...]`` is started by forking a fork server that imported the
modules (:mod:`devcluster.supervisor.forkserver`), so its command must be one the fork server can
run in-process: ``python [-u] -m MODULE ARGS...`` or ``python [-u] FILE.py ARGS...``,
without shell syntax (``$VAR`` in the arguments is fine).

>>> python_command(["python", "-m", "devcluster.greeter", "--port", "5000"])
('-m', 'devcluster.greeter')
>>> python_command(["/bin/sh", "-c", "python -m x | tee log"]) is None
True
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from devcluster.config.check import MODULE_NAME
from devcluster.config.procfile import SHELL_SYNTAX, ProcessType

if TYPE_CHECKING:
    from devcluster.config.project import Project

#: ``python``, ``python3``, ``python3.11`` (a path to one too).
_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
FIX = ("run python directly (`python -m MODULE ...` or `python FILE.py ...`, no shell, "
       "no interpreter options but -u) or remove preload")


def python_command(argv: Sequence[str]) -> tuple[str, str] | None:
    """``("-m", module)`` or ``("file", path)`` for a command the fork server can run."""
    if not argv or not _PYTHON.fullmatch(argv[0].rsplit("/", 1)[-1]):
        return None
    words = list(argv[2:] if argv[1:2] == ["-u"] else argv[1:])
    if len(words) >= 2 and words[0] == "-m" and MODULE_NAME.fullmatch(words[1]):
        return "-m", words[1]
    if words and words[0].endswith(".py") and not words[0].startswith("-") \
            and "$" not in words[0]:
        return "file", words[0]
    return None


def command_problem(command: str) -> str | None:
    """Why ``command`` (a Procfile line's text) cannot be preloaded, else None."""
    if SHELL_SYNTAX.search(command) or "'" in command or '"' in command:
        return "it needs a shell"
    try:
        words = shlex.split(command)
    except ValueError:
        return "it needs a shell"
    if python_command(words) is None:
        return "it is not `python -m MODULE` or `python FILE.py`"
    return None


#: Preloading needs Linux (pidfds, PR_SET_PDEATHSIG, a child subreaper). Elsewhere a
#: ``preload`` key is ignored, not refused: a project file shared by a team runs on
#: every system, the instances started the usual way.
PRELOAD_WORKS = sys.platform.startswith("linux")


def check_preload(project: Project | None, types: Sequence[ProcessType],
                  procfile: str) -> None:
    """Raise a ProjectError (one line: file, line, the fix) for a preloaded type whose
    Procfile command the fork server cannot run."""
    if project is None:
        return
    from devcluster.config.tomlerrors import ProjectError

    for ptype in types:
        settings = project.processes.get(ptype.name)
        if settings is None or not settings.preload:
            continue
        if not PRELOAD_WORKS:
            continue  # ignored: its instances start the usual way (see PRELOAD_WORKS)
        why = command_problem(ptype.command)
        if why:
            raise ProjectError(
                f"{project.source}:{project.line('process', ptype.name, 'preload')}: "
                f"process.{ptype.name}.preload cannot start {procfile}:{ptype.line} "
                f"{ptype.command!r}: {why}; {FIX}")
