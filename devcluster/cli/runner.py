"""Run a ``devcluster`` command line: parse it, run the command, render its answer, and
map every failure to its exit status, in one place.

Exit status: 0 done; 1 the world disagrees (no cluster, no such instance, a timeout);
2 the command line is wrong (unknown flag, bad value, bad file); 130 interrupted. A
mistake is one line on stderr (:func:`devcluster.cli.views.error_line`), never a
traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devcluster.cli import spec, views
from devcluster.cli.interrupt import heed_sigint
from devcluster.errors import DevclusterError, UsageError

_PROCFILE_OPTIONS = ("-f", "--file", "--procfile")
_MISPLACED_F = (" (-f FILE goes before the command, as in docker compose: "
                "`devcluster -f FILE up`; after it, use --procfile FILE)")


@dataclass
class _Before:
    """What came before the command: the Procfile, or an answer of its own."""

    procfile: str | None = None
    answer: str | None = None  # "version", "help", "show-completion", "install-completion"
    shell: str | None = None


def _value(args: list[str], i: int, option: str) -> tuple[str, int]:
    """The value of the option at ``args[i]`` (``-f V``, ``--file=V``, ``-fV``); next index."""
    arg = args[i]
    if arg.startswith("--") and "=" in arg:
        return arg.split("=", 1)[1], i + 1
    if arg.startswith("-f") and len(arg) > 2:
        return arg[2:], i + 1
    if i + 1 >= len(args):
        raise spec.CommandLineError(f"option {option} needs a value (see `devcluster --help`)")
    return args[i + 1], i + 2


def _before(args: list[str]) -> tuple[_Before, int]:
    """Read the options before the command; the index of the command."""
    got = _Before()
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg, key = args[i], args[i].split("=", 1)[0]
        if key in _PROCFILE_OPTIONS or (arg.startswith("-f") and not arg.startswith("--")):
            got.procfile, i = _value(args, i, key if key in _PROCFILE_OPTIONS else "-f")
        elif arg in ("-V", "--version"):
            got.answer = got.answer or "version"
            i += 1
        elif arg in ("-h", "--help"):
            got.answer = got.answer or "help"
            i += 1
        elif arg in ("--show-completion", "--install-completion"):
            got.answer = got.answer or arg[2:]
            i += 1
            if i < len(args) and not args[i].startswith("-") and args[i] not in spec.COMMANDS:
                got.shell, i = args[i], i + 1
        else:
            raise spec.CommandLineError(f"no such option: {arg} (see `devcluster --help`)")
    return got, i


def _unknown(name: str) -> UsageError:
    close = difflib.get_close_matches(name, list(spec.COMMANDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return spec.CommandLineError(f"no such command {name!r}{hint} (see `devcluster --help`)")


def _answer(got: _Before) -> int:
    if got.answer == "version":
        from devcluster import __version__

        print(f"devcluster {__version__}")
        return 0
    if got.answer == "help":
        print(spec.top_help())
        return 0
    from devcluster.cli import completion

    if got.answer == "show-completion":
        print(completion.script(completion.shell_of(got.shell)), end="")
        return 0
    print(completion.install(completion.shell_of(got.shell)))
    return 0


def parse(argv: Sequence[str]) -> tuple[spec.Command, dict[str, Any]] | int:
    """The command and its keyword arguments; or the exit status of an answer given here
    (``--version``, ``--help``, completion, no command at all)."""
    args = list(argv)
    got, i = _before(args)
    if got.answer is not None:
        return _answer(got)
    if i >= len(args):
        print(spec.top_help())
        return 2  # as before: a command is required
    command = spec.COMMANDS.get(args[i])
    if command is None:
        raise _unknown(args[i])
    rest = args[i + 1:]
    ends = rest.index("--") if "--" in rest else len(rest)
    if command.name not in spec.FOLLOWING and any(
            a == "-f" or (a.startswith("-f") and not a.startswith("--")) for a in rest[:ends]):
        raise spec.CommandLineError(f"no such option: -f{_MISPLACED_F}")
    kwargs = vars(spec.build(command).parse_intermixed_args(rest))
    if command.place:
        from devcluster.cli.place import resolve

        kwargs["at"] = resolve(got.procfile, kwargs.pop("procfile"), kwargs.pop("state_dir"),
                               kwargs.pop("registry", None))
    return command, {**kwargs, **command.fixed}


def _quiet_stdout() -> None:
    """Stdout went away (``devcluster ps | head -1``): send the rest nowhere, so Python's
    flush at exit does not print a traceback."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(argv: Sequence[str]) -> int:
    """Run one command line; its exit status."""
    try:
        parsed = parse(argv)
        if isinstance(parsed, int):
            return parsed
        command, kwargs = parsed
        heed_sigint()
        module = importlib.import_module(f"devcluster.cli.{command.module}")
        output = getattr(module, command.func)(**kwargs)
        code = views.render(output, bool(kwargs.get("as_json")))
        sys.stdout.flush()
        return code
    except DevclusterError as e:
        views.error_line(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 1
