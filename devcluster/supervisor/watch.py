"""``up --watch``: a rolling reload when watched files change (watchfiles).

Watched by default: the Procfile's directory. Ignored: ``.git``, the state dir,
virtual environments, ``__pycache__``, ``node_modules`` (and watchfiles' own list).
Which types reload for a file: those whose ``watch = ["src/**/*.py"]`` in
``devcluster.toml`` matches it, and every type without ``watch``. An edit of the
Procfile, ``.env`` or ``devcluster.toml`` is applied as a diff (every reload does).

A burst of saves is gathered into one reload (watchfiles yields once no change came
for ``WATCH_STEP_MS``); a change during a reload queues exactly one more.

>>> types_for(["src/app.py", "web/x.js"], {"api": ("src/**/*.py",), "web": ()})
['api', 'web']
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from devcluster import defaults
from devcluster.errors import DevclusterError

if TYPE_CHECKING:
    from devcluster.supervisor.runtime import Supervisor

#: Directories never watched, beyond watchfiles' defaults (.git, .venv, __pycache__,
#: node_modules, .tox, caches...).
IGNORE_DIRS = (defaults.STATE_DIR_NAME, "venv", ".nox", ".ruff_cache", "site-packages")
#: Files a reload re-reads anyway: their edits are applied as a diff, not as code.
CONFIG_FILES = ("Procfile", ".env", "devcluster.toml")
#: Changed paths named in one log line; the rest are counted.
SHOWN_PATHS = 3


def is_virtualenv(path: Path) -> bool:
    """A directory holding a Python virtual environment (whatever its name)."""
    return (path / "pyvenv.cfg").is_file()


class Filter(watchfiles.DefaultFilter):
    """watchfiles' default filter, plus our state dir, virtualenvs and IGNORE_DIRS."""

    def __init__(self, ignore_paths: Sequence[Path]) -> None:
        super().__init__(ignore_dirs=(*self.ignore_dirs, *IGNORE_DIRS),
                         ignore_paths=[str(p) for p in ignore_paths])


@cache
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``src/**/*.py`` as a regex over a relative POSIX path (``**`` spans directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def matches(relative: str, pattern: str) -> bool:
    """Does the relative POSIX path match the glob (``*`` within a directory, ``**`` across)?"""
    return _glob_regex(pattern.removeprefix("./")).fullmatch(relative) is not None


def types_for(changed: Iterable[str], globs: Mapping[str, Sequence[str]]) -> list[str]:
    """The types to reload for ``changed`` (relative POSIX paths): a type whose globs
    match one, and every type without globs (any change may be its code)."""
    changed = [c for c in changed if Path(c).name not in CONFIG_FILES]
    if not changed:
        return []
    return [t for t, patterns in globs.items()
            if not patterns or any(matches(c, p) for c in changed for p in patterns)]


def describe(changed: Sequence[str]) -> str:
    """``src/a.py, src/b.py (and 3 more)``."""
    shown = ", ".join(changed[:SHOWN_PATHS])
    more = len(changed) - SHOWN_PATHS
    return shown + (f" (and {more} more)" if more > 0 else "")


def roots(base: Path, paths: Sequence[Path], state_dir: Path) -> tuple[list[Path], list[Path]]:
    """(directories to watch recursively, to watch alone) for ``paths`` (default: ``base``).

    The default directory's own files are watched alone and its subdirectories one by
    one, skipping ignored ones: inotify then never holds a watch per directory of a
    virtualenv or node_modules (thousands; the user's watch limit).
    """
    if paths:
        return [p.absolute() for p in paths], []
    skip = {*Filter([]).ignore_dirs}
    deep = [d for d in sorted(base.iterdir()) if d.is_dir() and d.name not in skip
            and not is_virtualenv(d) and d.absolute() != state_dir.absolute()]
    return deep, [base]


class Watcher:
    """Gathers changes from watchfiles and runs one reload at a time for them."""

    def __init__(self, sup: Supervisor, paths: Sequence[Path] = ()) -> None:
        self.sup = sup
        self.base = sup.settings.procfile.parent.absolute()
        self.deep, self.flat = roots(self.base, paths, sup.settings.state_dir)
        venvs = [d for d in self.deep + self.flat for d in _children(d) if is_virtualenv(d)]
        self.filter = Filter([sup.settings.state_dir.absolute(), *venvs])
        self.pending: dict[str, None] = {}  # ordered set of changed paths
        self.wake = asyncio.Event()
        self.reloads = 0

    async def run(self) -> None:
        """Watch until cancelled (a duty of the supervisor's task group)."""
        where = ", ".join(str(p) for p in self.deep + self.flat)
        self.sup.sink.system(f"watching {where} for changes")
        stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                if self.deep:
                    group.create_task(self._collect(self.deep, True, stop))
                if self.flat:
                    group.create_task(self._collect(self.flat, False, stop))
                group.create_task(self._apply())
        finally:
            stop.set()

    async def _collect(self, paths: Sequence[Path], recursive: bool, stop: asyncio.Event) -> None:
        async for changes in watchfiles.awatch(
                *paths, watch_filter=self.filter, recursive=recursive, stop_event=stop,
                step=defaults.WATCH_STEP_MS, debounce=defaults.WATCH_DEBOUNCE_MS):
            for _, path in sorted(changes, key=lambda c: c[1]):
                self.pending[self._relative(path)] = None
            self.wake.set()

    def _relative(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.base).as_posix()
        except ValueError:
            return path

    async def _apply(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            changed, self.pending = list(self.pending), {}
            await self.reload_for(changed)

    async def reload_for(self, changed: Sequence[str]) -> None:
        """One reload for a batch of changed paths (changes meanwhile queue one more)."""
        sup = self.sup
        globs = {t: tuple(getattr(sup.crew.tables.get(t), "watch", ()) or ()) for t in sup.crew.type_order}
        running = {i.spec.process_type for i in sup.instances.values()}
        names = [t for t in types_for(changed, globs) if t in running]
        config = [c for c in changed if Path(c).name in CONFIG_FILES]
        if not names and not config:
            sup.sink.system(f"watch: {describe(changed)} changed; no type watches it")
            return
        self.reloads += 1
        what = ", ".join(names) if names else "the diff of " + describe(config)
        sup.sink.system(f"watch: {describe(changed)} changed; reloading {what}")
        try:
            await sup.reload(names, who="watch")
        except DevclusterError as e:  # a type gone meanwhile: the next change retries
            sup.sink.system(f"watch: reload refused: {e}")


def _children(path: Path) -> list[Path]:
    try:
        return [c for c in path.iterdir() if c.is_dir()]
    except OSError:
        return []
