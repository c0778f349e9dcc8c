"""Procfile and .env loading, validation and expansion into instances. Pure.

Parsing goes through honcho's parser (``honcho.environ``); on top of it we refuse
what honcho silently skips: a malformed line, a duplicate name, an empty file.
Every error names the file and line. Expansion follows foreman/honcho: ``$PORT``
is base + 100 per process type + 1 per instance; a type scaled explicitly gets
dotted names (``greeter.1``), an unscaled one keeps its own name (``server1``).

>>> types = parse_procfile("web: python -m devcluster.greeter --port $PORT", "Procfile")
>>> [i.name for i in expand(types, {"web": 2})]
['web.1', 'web.2']
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from honcho import environ as honcho_environ

from devcluster import defaults
from devcluster.errors import ProcfileError, UsageError

DEFAULT_BASE_PORT = defaults.BASE_PORT
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: An instance name (``server1``, ``greeter.2``) or a process type (``greeter``).
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[0-9]+)?$")
# Anything the shell would treat specially: pipes, lists, redirections, globs, tilde,
# command substitution, escapes, comments, leading assignments. `${NAME}` is not: we
# expand it ourselves. Public: the preload check refuses such commands too.
SHELL_SYNTAX = re.compile(r"[|&;<>()`*?\[\]~!\\\n]|\$\(|(?:^|\s)#|^\s*\w+=|\{(?!\w+\})")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class ProcessType:
    """One Procfile line: ``name: command``."""

    name: str
    command: str
    line: int


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to start one instance; the same on every (re)start."""

    name: str
    process_type: str
    command: str
    port: int
    """``$PORT`` for the instance; 0 means "let the server pick, find it with psutil"."""
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def service(self) -> str:
        """The process type with trailing digits stripped: ``server1`` -> ``server``."""
        return service_of(self.process_type)


def service_of(process_type: str) -> str:
    """``server1`` -> ``server``, ``greeter`` -> ``greeter`` (a name of digits stays)."""
    return process_type.rstrip("0123456789") or process_type


def read_text(path: Path, what: str) -> str:
    """Read a user file, turning every way it can be unreadable into one clear line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if what == "Procfile":
            raise ProcfileError(
                f"no Procfile at {path}; create one (e.g. 'web: python -m devcluster.greeter "
                "--port $PORT') or pass -f FILE") from None
        raise ProcfileError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ProcfileError(f"{what} {path} is a directory; pass the file itself") from None
    except PermissionError:
        raise ProcfileError(f"cannot read {what} {path}: permission denied") from None
    if b"\0" in data:
        raise ProcfileError(f"{what} {path} is not a text file (it contains NUL bytes)")
    try:
        # A UTF-8 byte order mark (Notepad and other Windows editors write one) means
        # nothing in UTF-8 and no editor shows it: read past it, as Python's utf-8-sig
        # codec does (it made line 1 "illegal characters" or "Invalid statement").
        # The file itself is left as it is.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProcfileError(
            f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None


def parse_procfile(text: str, source: str) -> tuple[ProcessType, ...]:
    """Validate ``text`` line by line, then parse it with honcho's parser."""
    seen: dict[str, int] = {}
    types: list[ProcessType] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = honcho_environ.PROCFILE_LINE.match(line)
        if not match:
            name = line.split(":", 1)[0].strip()
            if ":" in line and name and not _NAME.match(name):
                raise ProcfileError(
                    f"{source}:{number}: process name {name!r} has illegal characters; "
                    "use letters, digits, '-' and '_'")
            raise ProcfileError(
                f"{source}:{number}: malformed line {raw.strip()!r}; expected 'name: command'")
        name = match.group(1)
        if name in seen:
            raise ProcfileError(
                f"{source}:{number}: duplicate process name {name!r} (first on line "
                f"{seen[name]}); rename one of them")
        seen[name] = number
        types.append(ProcessType(name, match.group(2).strip(), number))
    if not types:
        raise ProcfileError(
            f"{source} defines no processes; add a line like "
            "'web: python -m devcluster.greeter --port $PORT'")
    # honcho's own parser must agree with our validation; it is the reference. Its
    # pattern is anchored at column 0, so give it the lines as we validated them.
    parsed = honcho_environ.parse_procfile(
        "\n".join(line.strip() for line in text.splitlines())).processes
    return tuple(ProcessType(t.name, parsed[t.name].strip(), t.line) for t in types)


def parse_env(text: str, source: str) -> dict[str, str]:
    """Parse a .env file with honcho's parser, reporting bad lines with their number."""
    empty: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, _ = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ProcfileError(f"{source}:{number}: malformed env line {raw.strip()!r}; "
                                "expected KEY=value")
        value_text = line.partition("=")[2]
        try:
            # As honcho's shlex lexer reads it: quotes group, '#' starts a comment.
            words = shlex.split(value_text, comments=True)
        except ValueError as e:
            raise ProcfileError(f"{source}:{number}: {e} in {raw.strip()!r}") from None
        if len(words) > 1:
            # honcho would glue the words together and lose the spaces: refuse instead.
            raise ProcfileError(f"{source}:{number}: the value of {key.strip()} has spaces; "
                                f"quote it: {key.strip()}=\"{' '.join(words)}\"")
        if not words:
            empty.add(key.strip())
    text = "\n".join(
        ln.strip()[len("export "):] if ln.strip().startswith("export ") else ln
        for ln in text.splitlines())
    values: dict[str, str] = honcho_environ.parse(text)
    for key in empty:  # honcho drops `KEY=`; an empty value is a value
        values.setdefault(key, "")
    return values


def parse_scale(items: Sequence[str]) -> dict[str, int]:
    """``["greeter=3"]`` -> ``{"greeter": 3}``; bad items are usage errors."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not name:
            raise UsageError(f"bad scale {item!r}; expected TYPE=N, e.g. greeter=3")
        # ASCII digits only: int() also reads "١٢" (Arabic-Indic digits) and "1_0".
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", count.strip()):
            raise UsageError(f"bad scale {item!r}: {count!r} is not a whole number "
                             "(digits 0-9)")
        value = int(count)
        if value < 0:
            raise UsageError(f"bad scale {item!r}: the count must be 0 or more")
        out[name] = value
    return out


def expand(
    types: Sequence[ProcessType],
    scale: Mapping[str, int] | None = None,
    base_port: int = DEFAULT_BASE_PORT,
    env: Mapping[str, str] | None = None,
) -> list[InstanceSpec]:
    """Instances for ``types`` scaled by ``scale``, with ports and per-instance env.

    ``base_port=0`` gives every instance ``PORT=0``: the server picks a free port
    and the supervisor finds it (no collisions between clusters running at once).
    """
    scale = dict(scale or {})
    known = {t.name for t in types}
    for name in scale:
        if name not in known:
            raise UsageError(f"cannot scale {name!r}: the Procfile has no such process type; "
                             f"types: {', '.join(sorted(known))}")
    out: list[InstanceSpec] = []
    for type_index, ptype in enumerate(types):
        count = scale.get(ptype.name, 1)
        for i in range(1, count + 1):
            name = f"{ptype.name}.{i}" if ptype.name in scale else ptype.name
            out.append(instance_spec(ptype, name, type_index, i, base_port, env))
    return out


def instance_spec(
    ptype: ProcessType, name: str, type_index: int, number: int, base_port: int,
    env: Mapping[str, str] | None,
) -> InstanceSpec:
    """The spec of instance ``number`` (1-based) of ``ptype``, foreman's port scheme."""
    port = base_port + 100 * type_index + number - 1 if base_port else 0
    check_port(port, name, base_port)
    child_env = dict(env or {})
    child_env.update({"PORT": str(port), "PS": name, defaults.ENV_INSTANCE: name,
                      "PYTHONUNBUFFERED": "1"})
    return InstanceSpec(name, ptype.name, ptype.command, port, MappingProxyType(child_env))


def check_name(name: str) -> str:
    """``name`` if it can name an instance or a process type; a path or a malformed name
    is a usage error (it never reaches a file system path or a lookup)."""
    if not _INSTANCE_NAME.match(name):
        raise UsageError(f"{name!r} is not an instance name; names are like server1, greeter "
                         "or greeter.2 (letters, digits, '-', '_', then optionally .N)")
    return name


def check_port(port: int, name: str, base_port: int) -> None:
    """A port an instance would get must be a TCP port: 1..65535 (0: the server picks)."""
    if base_port and not defaults.MIN_PORT <= port <= defaults.MAX_PORT:
        raise UsageError(
            f"port {port} for {name} is out of range {defaults.MIN_PORT}..{defaults.MAX_PORT} "
            f"(base port {base_port}, +100 per process type, +1 per instance); pass a base "
            "with --port that fits every instance, or --port 0 to let servers pick")


def command_argv(command: str, env: Mapping[str, str]) -> list[str]:
    """argv to exec for ``command``: direct when it is a plain command, else via ``sh -c``.

    A plain command (words and ``$VAR``s) is split and expanded here, saving the
    shell's fork and start-up per instance; anything using shell syntax
    (pipes, ``&&``, globs, redirections, assignments) goes to ``/bin/sh -c``.
    """
    if not SHELL_SYNTAX.search(command):
        try:
            words = shlex.split(command)
        except ValueError:
            words = []
        values = [env.get(m.group(1) or m.group(2)) for m in _VAR.finditer(command)]
        # An unset/empty variable vanishes and a value with spaces splits into words
        # in sh; only the plain case (set, one word) is expanded here.
        plain = all(v and not any(c.isspace() for c in v) for v in values)
        if words and plain and "'" not in command and '"' not in command:
            return [_VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), w) for w in words]
    return ["/bin/sh", "-c", command]


def load(
    procfile: Path, env_files: Sequence[Path] = (), scale: Mapping[str, int] | None = None,
    base_port: int = DEFAULT_BASE_PORT,
) -> tuple[tuple[ProcessType, ...], dict[str, str], list[InstanceSpec]]:
    """Read the Procfile, ``.env`` beside it and ``env_files``; expand into instances."""
    types = parse_procfile(read_text(procfile, "Procfile"), str(procfile))
    env: dict[str, str] = {}
    dotenv = procfile.parent / ".env"
    for path in ([dotenv] if dotenv.is_file() else []) + list(env_files):
        env.update(parse_env(read_text(path, "env file"), str(path)))
    if "PORT" in env and base_port == DEFAULT_BASE_PORT:
        base_port = _port_from_env(env["PORT"])
    return types, env, expand(types, scale, base_port, env)


def _port_from_env(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"PORT={value!r} in the env file is not a port number") from None


def instance_environment(spec: InstanceSpec, interpreter_dir: str, extra: Mapping[str, str],
                         grace: float, port: int = 0) -> dict[str, str]:
    """The environment of an instance's process: :func:`child_environment`, then the
    type's ``env`` from devcluster.toml (``extra``), the grace, SO_REUSEPORT consent, and
    ``port`` when it is not the spec's (it keeps the port it found)."""
    env = child_environment(spec, interpreter_dir)
    env.update(extra)  # the file's env: over the env files, under PORT & co
    env[defaults.ENV_GRACE] = f"{grace:g}"  # servers may finish calls within it
    if defaults.ENV_REUSEPORT not in env:  # .env or the file may say 0: a spare port
        env[defaults.ENV_REUSEPORT] = "1"  # a reload may start our replacement on our port
    if port and port != spec.port:
        env["PORT"] = str(port)
    return env


def child_environment(spec: InstanceSpec, interpreter_dir: str) -> dict[str, str]:
    """The full environment of an instance: ours, then the env files, then its own vars.

    ``interpreter_dir`` goes first on ``PATH`` so ``python`` in a Procfile means
    the interpreter devcluster runs on (where grpcio is installed).
    """
    env = dict(os.environ)
    env.update(spec.env)
    path = env.get("PATH", "")
    if interpreter_dir and interpreter_dir not in path.split(os.pathsep)[:1]:
        env["PATH"] = interpreter_dir + (os.pathsep + path if path else "")
    return env
