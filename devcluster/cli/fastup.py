"""``devcluster up`` without typer and rich: the fast path of the command that starts a
cluster, whose every millisecond is time to ready (issue 21).

:func:`parse` reads the plain forms of ``up`` (``[-f FILE] up [-d] [-p PORT] [-c TYPE=N]...
[--state-dir DIR] [--procfile FILE] [-e FILE]... [--grace S] [--ready-timeout S]
[--config FILE] [--json]``); :func:`run` does what the typer command
(``devcluster.cli.cluster.up``) does with them, with the same calls and the same output:
``-d`` through :class:`~devcluster.api.Cluster`, the foreground through
:func:`devcluster.daemon.serve` (a foreground supervisor then holds neither typer nor
rich in its memory). Any other command line (``--watch``, ``--console``, ``--restart``,
``--registry``, help, a typo, a value typer would refuse) it leaves to the typer CLI,
which explains mistakes.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devcluster.cli import views

#: Options that take a value, by every spelling the typer command accepts.
_VALUED = {"-p": "port", "--port": "port", "-c": "scale", "--scale": "scale",
           "--state-dir": "state_dir", "--procfile": "procfile", "--file": "procfile",
           "-e": "env", "--env": "env", "--grace": "grace", "--ready-timeout": "ready_timeout",
           "--config": "config"}
_REPEATED = {"scale", "env"}
_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")


class NotMine(Exception):
    """A command line the fast path leaves to the typer CLI."""


def parse(argv: Sequence[str]) -> dict[str, Any]:
    """The options of a plain ``[-f FILE] up -d ...`` line, or NotMine."""
    args = list(argv)
    opts: dict[str, Any] = {"scale": [], "env": [], "detach": False, "json": False}
    i = 0
    while i < len(args) and args[i].split("=", 1)[0] in ("-f", "--file", "--procfile"):
        opts["procfile"], i = _value(args, i)
    if args[i:i + 1] != ["up"]:
        raise NotMine
    i += 1
    while i < len(args):
        arg, key = args[i], args[i].split("=", 1)[0]
        if arg in ("-d", "--detach"):
            opts["detach"], i = True, i + 1
        elif arg == "--json":
            opts["json"], i = True, i + 1
        elif key in _VALUED and (arg == key or arg.startswith("--")):
            value, i = _value(args, i)
            name = _VALUED[key]
            if name in _REPEATED:
                opts[name].append(value)
            else:
                opts[name] = value
        else:
            raise NotMine  # a flag of the foreground up, help, a typo, a path: typer's
    if opts["json"] and not opts["detach"]:
        raise NotMine  # typer says why --json needs -d
    # A value typer would refuse, typer refuses (with its words and exit status 2).
    if "port" in opts and not opts["port"].isdigit():
        raise NotMine
    if any(n in opts and not _NUMBER.fullmatch(opts[n]) for n in ("grace", "ready_timeout")):
        raise NotMine
    return opts


def _value(args: list[str], i: int) -> tuple[str, int]:
    arg = args[i]
    if "=" in arg and arg.startswith("--"):
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(args) or args[i + 1].startswith("-"):
        raise NotMine
    return args[i + 1], i + 2


def _flags(opts: dict[str, Any]) -> dict[str, Any]:
    """The options as the typer command has them once parsed and checked."""
    from devcluster import defaults
    from devcluster.config.procfile import parse_scale
    from devcluster.errors import UsageError

    procfile = Path(opts.get("procfile") or "Procfile")
    scale = parse_scale(opts["scale"])
    ready_timeout = float(opts["ready_timeout"]) if "ready_timeout" in opts else None
    if ready_timeout is not None and ready_timeout <= 0:
        raise UsageError("--grace must be >= 0 and --ready-timeout > 0")
    return {"procfile": procfile, "scale": scale,
            "directory": defaults.state_dir(procfile, opts.get("state_dir")),
            "port": int(opts["port"]) if "port" in opts else None,
            "grace": float(opts["grace"]) if "grace" in opts else None,
            "ready_timeout": ready_timeout, "env": [Path(e) for e in opts["env"]],
            "config": Path(opts["config"]) if "config" in opts else None}


def run(opts: dict[str, Any]) -> int:
    """``up`` as ``devcluster.cli.cluster.up`` does it; the exit status."""
    flags = _flags(opts)
    return detached(flags, opts["json"]) if opts["detach"] else foreground(flags)


def foreground(f: dict[str, Any]) -> int:
    """The supervisor in this process, its log on the terminal, until Ctrl-C."""
    import asyncio

    from devcluster.config.plan import plan
    from devcluster.config.project import Flags
    from devcluster.daemon import serve
    from devcluster.supervisor.runtime import Settings

    r = plan(f["procfile"], Flags(port=f["port"], grace=f["grace"],
                                  ready_timeout=f["ready_timeout"], registry=None,
                                  scale=f["scale"], restart={}), f["config"])
    settings = Settings(procfile=f["procfile"].absolute(), state_dir=f["directory"],
                        env_files=tuple(f["env"]), scale=dict(r.scale), base_port=r.port,
                        grace=r.grace, ready_timeout=r.ready_timeout, restart=dict(r.restart),
                        registry=r.registry,
                        config=f["config"].absolute() if f["config"] else None,
                        types=r.types, waves=r.waves, watch=None)
    return asyncio.run(serve(settings, sys.stdout))


def detached(f: dict[str, Any], as_json: bool) -> int:
    """``up -d``: the supervisor in the background; return once every instance settled."""
    from devcluster.api import Cluster, NotReadyError, default_state_dir

    procfile, directory = f["procfile"], f["directory"]
    cluster = Cluster(procfile, scale=f["scale"], state_dir=directory, port=f["port"],
                      grace=f["grace"], env_files=f["env"], restart={},
                      ready_timeout=f["ready_timeout"], attach=False, registry=None,
                      watch=None, console=False, console_port=0, config=f["config"])
    began = time.monotonic()
    try:
        states = cluster.up()
    except NotReadyError as e:
        _notes(cluster.notes)
        views.print_instances(list(e.states.values()), as_json)
        sys.stdout.flush()
        error_line(f"{e}; the cluster keeps running: fix it, then `devcluster start NAME`")
        return 1
    _notes(cluster.notes)
    views.print_instances(list(states.values()), as_json)
    if not as_json:
        where = "" if directory == default_state_dir(procfile) else f" --state-dir {directory}"
        print(f"ready in {time.monotonic() - began:.2f} s; stop with `devcluster down{where}`")
    return 0


def _notes(notes: list[str]) -> None:
    for note in notes:
        print(f"devcluster: {note}", file=sys.stderr)


def error_line(message: str) -> None:
    """The one line the typer CLI prints for a mistake (red where stderr is a terminal)."""
    label = views.paint("devcluster: error:", "red", views.use_colour(sys.stderr))
    print(f"{label} {message}", file=sys.stderr)
