"""The commands people type most (``ps``, ``registry``, ``weight``, ``enable``,
``disable``, ``kill``; ``up -d`` in :mod:`devcluster.cli.fastup`), done once for both ways in.

The typer commands call these functions; so does :func:`main`, a fast path that
:mod:`devcluster.cli.entry` tries first. It reads the plain forms of those commands
(``devcluster [-f FILE] ps [--json] [--state-dir DIR] [--procfile FILE]``...) and
answers without importing typer or rich, which cost a command three times what the
work does. Anything it does not recognise (help, a typo, an etcd ``--registry``) it
leaves to the typer CLI, which explains mistakes; so a mistake never meets this parser.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devcluster import defaults
from devcluster.cli import views
from devcluster.errors import DevclusterError, UnknownInstanceError, UsageError

FAST_COMMANDS = frozenset({"ps", "registry", "weight", "enable", "disable", "kill"})


# -- the commands -----------------------------------------------------------------------

def ps(state_dir: Path, as_json: bool) -> None:
    """``ps`` through the control socket: the supervisor's view, live stats included."""
    from devcluster.control.plane import ControlClient, as_dict

    with ControlClient(state_dir) as control:
        rows = [as_dict(i) for i in control.ps().instances]
    views.print_instances(rows, as_json)


def registry(reg: Any, as_json: bool, where: str) -> None:
    """``registry``: the raw records, as stored."""
    snap = reg.snapshot()
    if as_json:
        views.print_json({"revision": snap.revision,
                          "instances": {n: r.to_dict() for n, r in snap.records.items()}})
        return
    print(views.records_table(f"{where} (revision {snap.revision})", snap.records.values(),
                              views.use_colour(sys.stdout)))


def registry_names(reg: Any, name: str) -> list[str]:
    """``name`` itself, or every instance of the process type ``name``."""
    from devcluster.config.procfile import check_name

    check_name(name)
    snap = reg.snapshot()
    if name in snap.records:
        return [name]
    of_type = [r.name for r in snap.records.values() if r.name.split(".")[0] == name]
    if of_type:
        return of_type
    raise UnknownInstanceError(name, list(snap.records))


def registry_write(reg: Any, name: str, change: dict[str, Any], said: str, as_json: bool) -> None:
    """Apply ``change`` to an instance (or every instance of a type) and say what it is now."""
    names = registry_names(reg, name)
    records = reg.update_many({n: change for n in names}).records
    if as_json:
        views.print_json([records[n].to_dict() for n in names if n in records])
        return
    for n in names:
        print(f"{n}: {said}")


def act(state_dir: Path, verb: str, names: Sequence[str], all_: bool, as_json: bool,
        **kw: Any) -> None:
    """A verb of the control plane (kill, stop, start, ...) on instances or types."""
    if not names and not all_:
        raise UsageError(f"name an instance or process type to {verb}, or pass --all")
    from devcluster.control.plane import ControlClient, as_dict

    with ControlClient(state_dir) as control:
        reply = control.act(verb, list(names), all_=all_, **kw)
    rows = [as_dict(i) for i in reply.instances]
    if as_json:
        views.print_json(rows)
        return
    for line in views.action_lines(rows, reply.unchanged):
        print(line)


# -- the fast path ----------------------------------------------------------------------

class _NotMine(Exception):
    """A command line the fast path leaves to the typer CLI."""


def _value(args: list[str], i: int) -> tuple[str, int]:
    """The value of the option at ``args[i]`` (``--opt V`` or ``--opt=V``) and the next index."""
    arg = args[i]
    if "=" in arg and arg.startswith("--"):
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(args) or args[i + 1].startswith("-"):
        raise _NotMine
    return args[i + 1], i + 2


def _parse(argv: Sequence[str]) -> tuple[str, list[str], dict[str, Any]]:
    """``(command, positional, options)`` of a plain command line, or _NotMine."""
    args = list(argv)
    opts: dict[str, Any] = {"json": False, "procfile": None, "state_dir": None, "signal": None,
                            "all": False}
    i = 0
    while i < len(args) and args[i].split("=", 1)[0] in ("-f", "--file", "--procfile"):
        opts["procfile"], i = _value(args, i)
    if i >= len(args) or args[i] not in FAST_COMMANDS:
        raise _NotMine
    command, i = args[i], i + 1
    positional: list[str] = []
    while i < len(args):
        arg, key = args[i], args[i].split("=", 1)[0]
        if arg == "--json":
            opts["json"], i = True, i + 1
        elif arg == "--all" and command == "kill":
            opts["all"], i = True, i + 1
        elif key in ("--procfile", "--file"):
            opts["procfile"], i = _value(args, i)
        elif key == "--state-dir":
            opts["state_dir"], i = _value(args, i)
        elif command == "kill" and key in ("--signal", "-s"):
            opts["signal"], i = _value(args, i)
        elif arg == "--":
            positional.extend(args[i + 1:])
            break
        elif arg.startswith("-"):
            raise _NotMine  # help, an option we don't know, an etcd --registry: typer's
        else:
            positional.append(arg)
            i += 1
    arity = {"ps": (0, 0), "registry": (0, 0), "weight": (2, 2), "enable": (1, 1),
             "disable": (1, 1), "kill": (0, 1 << 30)}[command]
    if not arity[0] <= len(positional) <= arity[1]:
        raise _NotMine
    return command, positional, opts


def _run(command: str, positional: list[str], opts: dict[str, Any]) -> None:
    procfile = Path(opts["procfile"] or "Procfile")
    state_dir = defaults.state_dir(procfile, opts["state_dir"])
    if command == "ps":
        return ps(state_dir, opts["json"])
    if command == "kill":
        from devcluster.config.signals import parse_signal

        signal_name = opts["signal"] or "SIGKILL"
        parse_signal(signal_name)
        return act(state_dir, "kill", positional, opts["all"], opts["json"], signal=signal_name)
    from devcluster.registry import FileRegistry
    from devcluster.registry.record import parse_weight

    if command == "weight":  # a bad value is said before the registry is looked at
        weight = parse_weight(positional[1])
        change: dict[str, Any] = {"weight": weight}
        said = f"weight {weight}"
    else:
        change = {"enabled": command == "enable"}
        said = f"{command}d"
    reg = FileRegistry(state_dir)
    try:
        if command == "registry":
            return registry(reg, opts["json"], str(reg.path))
        return registry_write(reg, positional[0], change, said, opts["json"])
    finally:
        reg.close()


def main(argv: Sequence[str]) -> int | None:
    """Run a plain ``ps``/``registry``/``weight``/``enable``/``disable``/``kill`` command
    line and return its exit status; None when the typer CLI should handle it."""
    if os.environ.get(defaults.ENV_REGISTRY):
        return None  # an etcd registry: the full CLI knows it
    if "up" in argv[:3]:
        from devcluster.cli import fastup
        try:
            up_opts = fastup.parse(argv)
        except fastup.NotMine:
            return None
        return _guarded(lambda: fastup.run(up_opts))
    try:
        command, positional, opts = _parse(argv)
    except _NotMine:
        return None
    return _guarded(lambda: _run(command, positional, opts))


def _guarded(command: Callable[[], int | None]) -> int:
    """Run ``command``; a mistake is one line on stderr and its exit status."""
    try:
        code = command()
    except DevclusterError as e:
        # The same one line the typer CLI prints (its red, where stderr is a terminal).
        label = views.paint("devcluster: error:", "red", views.use_colour(sys.stderr))
        print(f"{label} {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130
    return code or 0
