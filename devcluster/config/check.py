"""The value checks of ``devcluster.toml`` and the dependency graph. Pure.

Each check takes the table, the key's path and a context that turns a problem into
a :class:`~devcluster.config.tomlerrors.ProjectError` naming the file and line; it returns
the value, or None when the key is absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from devcluster import defaults
from devcluster.config.tomlerrors import Context, kind
from devcluster.errors import UsageError

if TYPE_CHECKING:
    from devcluster.config.tomllines import KeyPath

TYPE_NAME = re.compile(r"[A-Za-z0-9_-]+")
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
META_KEY = re.compile(r"[A-Za-z0-9_.:/-]+")
#: Set per instance by devcluster: a value in the file would be silently replaced.
RESERVED_ENV = ("PORT", "PS", "DEVCLUSTER_INSTANCE")


def string(ctx: Context, table: Mapping[str, Any], path: KeyPath) -> str | None:
    value = table.get(path[-1])
    if value is None or isinstance(value, str):
        return value
    raise ctx.error(path, f"must be a string, not {kind(value)}; quote it: "
                    f"{path[-1]} = \"{value}\"")


def integer(ctx: Context, table: Mapping[str, Any], path: KeyPath, low: int,
            high: int) -> int | None:
    value = table.get(path[-1])
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(path, f"must be a whole number, not {kind(value)}; "
                        f"e.g. {path[-1]} = {max(low, 1)}")
    if not low <= value <= high:
        raise ctx.error(path, f"= {value} is out of range; use {low} to {high}")
    return value


def boolean(ctx: Context, table: Mapping[str, Any], path: KeyPath) -> bool | None:
    """true or false."""
    value = table.get(path[-1])
    if value is None or isinstance(value, bool):
        return value
    raise ctx.error(path, f"must be true or false, not {kind(value)}; e.g. {path[-1]} = true")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int | None:
    """Bytes in a size like ``"10MiB"``, ``"512 KiB"``, ``"1MB"`` or ``"4096"``; None if
    it is not one.

    >>> parse_size("10MiB"), parse_size("1.5 kB"), parse_size("10 megs")
    (10485760, 1500, None)
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size(ctx: Context, table: Mapping[str, Any], path: KeyPath, low: int,
         high: int) -> int | None:
    """A number of bytes: a whole number, or a string with a unit (``"10MiB"``)."""
    value = table.get(path[-1])
    if value is None:
        return None
    example = f'e.g. {path[-1]} = "10MiB" (KiB, MiB, GiB; KB, MB, GB) or a number of bytes'
    if isinstance(value, str):
        parsed = parse_size(value)
        if parsed is None:
            raise ctx.error(path, f"= {value!r} is not a size; {example}")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(path, f"must be a size, not {kind(value)}; {example}")
    else:
        parsed = value
    if not low <= parsed <= high:
        raise ctx.error(path, f"= {value!r} is out of range; use {_human(low)} to {_human(high)}")
    return parsed


def _human(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it: ``4 KiB``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n % _UNITS[unit.lower()] == 0:
            return f"{n // _UNITS[unit.lower()]} {unit}"
    return f"{n} bytes"


def number(ctx: Context, table: Mapping[str, Any], path: KeyPath, minimum: float,
           strict: bool = False) -> float | None:
    """A number of seconds >= ``minimum`` (> with ``strict``)."""
    value = table.get(path[-1])
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.error(path, f"must be a number of seconds, not {kind(value)}; "
                        f"e.g. {path[-1]} = 5")
    # inf and nan fail the comparison too (no float() of a 400-digit TOML integer).
    if not minimum <= value <= defaults.MAX_SECONDS or (strict and value == minimum):
        bound = ">" if strict else ">="
        shown = value if isinstance(value, float) or abs(value) < 10**18 else "a huge number"
        raise ctx.error(path, f"= {shown} is out of range; use a number of seconds {bound} "
                        f"{minimum:g} and at most {defaults.MAX_SECONDS:g} "
                        f"({defaults.MAX_SECONDS_WORDS})")
    return float(value)


def no_null_bytes(ctx: Context, value: Any, path: KeyPath) -> None:
    """Refuse a string anywhere under ``value`` that holds a null byte (``"\\u0000"``):
    no environment variable, argument or path can carry one."""
    problem = "contains a null byte (\\u0000), which no environment variable, command " \
              "or path can hold; remove it"
    if isinstance(value, str) and "\0" in value:
        raise ctx.error(path, problem)
    if isinstance(value, dict):
        for key, item in value.items():
            if "\0" in key:
                raise ctx.error(path, "has a key that " + problem)
            no_null_bytes(ctx, item, (*path, key))
    if isinstance(value, list):
        for item in value:
            no_null_bytes(ctx, item, path)


def _string_table(ctx: Context, table: Mapping[str, Any], path: KeyPath,
                  key_ok: re.Pattern[str], key_hint: str) -> Mapping[str, str]:
    value = table.get(path[-1])
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise ctx.error(path, f"must be a table of strings, not {kind(value)}; "
                        f"e.g. {path[-1]} = {{ KEY = \"value\" }}")
    for key, item in value.items():
        if not key_ok.fullmatch(key):
            raise ctx.error((*path, key), f"is not a valid key; {key_hint}")
        if not isinstance(item, str):
            raise ctx.error((*path, key), f"must be a string, not {kind(item)}; quote it: "
                            f"{key} = \"{str(item).lower() if isinstance(item, bool) else item}\"")
    return MappingProxyType(dict(value))


def env(ctx: Context, table: Mapping[str, Any], path: KeyPath) -> Mapping[str, str]:
    values = _string_table(ctx, table, path, ENV_NAME,
                           "use letters, digits and '_', not starting with a digit")
    for key in RESERVED_ENV:
        if key in values:
            raise ctx.error((*path, key), "is set by devcluster for each instance; remove it "
                            "(use [cluster] port for the base port)")
    return values


def metadata(ctx: Context, table: Mapping[str, Any], path: KeyPath) -> Mapping[str, str]:
    return _string_table(ctx, table, path, META_KEY,
                         "use letters, digits and '_.:/-' (no '=' or spaces)")


def names(ctx: Context, table: Mapping[str, Any], path: KeyPath,
          pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
    """An array of strings (each matching ``pattern`` if given)."""
    value = table.get(path[-1])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.error(path, f"must be an array of strings, e.g. {path[-1]} = [\"a\", \"b\"]")
    for item in value:
        if not item or (pattern is not None and not pattern.fullmatch(item)):
            raise ctx.error(path, f"has {item!r}, not {what}")
    if len(set(value)) != len(value):
        raise ctx.error(path, "lists a name twice; remove the repeat")
    return tuple(value)


def probe_arg(kind: str, arg: str) -> str | None:
    """Why ``arg`` cannot be the argument of a ``kind`` probe, or None."""
    if kind == "http" and not arg.startswith("/"):
        return f"= {arg!r} must be a path starting with '/', e.g. \"/healthz\""
    if kind == "exec" and not arg.strip():
        return "must be a command, e.g. exec = \"pg_isready -p $PORT\""
    if kind == "log":
        if not arg:
            return "must be a regex matching a line the instance prints when ready"
        try:
            re.compile(arg)
        except re.error as e:
            return f"= {arg!r} is not a valid regex ({e}); escape special characters with \\\\"
    return None


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in ``deps`` as ``[a, b, a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in deps.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in deps:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def waves(types: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """``types`` grouped so each group depends only on earlier groups (Kahn's layers).

    Dependencies on names outside ``types`` are ignored (checked elsewhere).
    """
    level: dict[str, int] = {}

    def depth(name: str, seen: tuple[str, ...]) -> int:
        if name not in level:
            inside = [d for d in deps.get(name, ()) if d in types and d not in seen]
            level[name] = 1 + max((depth(d, (*seen, name)) for d in inside), default=-1)
        return level[name]

    for name in types:
        depth(name, ())
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in types:
        out[level[name]].append(name)
    return out


def parse_meta_items(items: Iterable[str]) -> dict[str, str | None]:
    """``["zone=a", "tier="]`` -> ``{"zone": "a", "tier": None}`` (``KEY=`` removes a key).

    >>> parse_meta_items(["zone=a", "tier="])
    {'zone': 'a', 'tier': None}
    """
    out: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not META_KEY.fullmatch(key):
            raise UsageError(f"bad metadata {item!r}; expected KEY=VALUE (KEY= removes KEY), "
                             "KEY of letters, digits and '_.:/-'")
        out[key] = value or None
    return out


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``--where zone=a --where tier=gold`` -> ``{"zone": "a", "tier": "gold"}`` (all must match).

    >>> parse_where(["zone=a"])
    {'zone': 'a'}
    """
    out: dict[str, str] = {}
    for item in items:
        ((key, value),) = parse_meta_items([item]).items()
        if value is None:
            raise UsageError(f"bad --where {item!r}; expected KEY=VALUE with a value, e.g. "
                             "--where zone=a")
        out[key] = value
    return out
