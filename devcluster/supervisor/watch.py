"""``up --watch``: a rolling reload when files change (watchfiles).

Watched by default: the Procfile's directory. Ignored: ``.git``, the state dir,
virtual environments, ``__pycache__``, ``node_modules`` (and watchfiles' own list),
``*.log``, and the files the supervisor's own stdout and stderr go to (and those of
the ``up -d`` that started it): under ``up --watch > up.log`` each reload's own lines
would change ``up.log`` and reload again, forever.
Which types reload for a file: those whose ``watch = ["src/**/*.py"]`` in
``devcluster.toml`` matches it, and every type without ``watch``. An edit of the
Procfile, ``.env`` or ``devcluster.toml`` is applied as a diff (every reload does).

A burst of saves is gathered into one reload (watchfiles yields once no change came
for ``WATCH_STEP_MS``); a change during a reload queues exactly one more.

The watcher is an aid, not a reason to stop the cluster. A path it may not read
(``up --watch /`` meets ``/proc/1/task/1/fdinfo``) is said once and left out; the
rest is watched. inotify forgets a deleted directory and says nothing of one made
anew (``rm -rf gen; mkdir gen``), so what is watched is looked at again every
``WATCH_RECHECK_S``: a root deleted, re-created or replaced (an editor's save by
rename), or a new directory beside the Procfile, starts the watch over.

>>> types_for(["src/app.py", "web/x.js"], {"api": ("src/**/*.py",), "web": ()})
['api', 'web']
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from devcluster import defaults
from devcluster.errors import DevclusterError

if TYPE_CHECKING:
    from devcluster.supervisor.runtime import Supervisor

#: Directories never watched: watchfiles' own list, any state dir, and ours.
IGNORE_DIRS = (*watchfiles.DefaultFilter.ignore_dirs, defaults.STATE_DIR_NAME,
               *defaults.WATCH_IGNORE_DIRS)
#: Files a reload re-reads anyway: their edits are applied as a diff, not as code.
CONFIG_FILES = ("Procfile", ".env", "devcluster.toml")
#: Changed paths named in one log line; the rest are counted.
SHOWN_PATHS = 3


def is_virtualenv(path: Path) -> bool:
    """A directory holding a Python virtual environment (whatever its name)."""
    try:
        return (path / "pyvenv.cfg").is_file()
    except OSError:  # a directory we may not read: not one we can watch either
        return False


def own_output() -> list[str]:
    """The regular files this process's stdout and stderr write to, and its parent's:
    the ``up`` that started a background supervisor (``up -d --watch > up.log``) writes
    its report there once the cluster is ready. Resolved; none off Linux (no /proc)."""
    parent = os.getppid()
    files = []
    for pid in ("self", *([str(parent)] if parent > 1 else [])):
        for fd in (1, 2):
            link = f"/proc/{pid}/fd/{fd}"
            try:
                if stat.S_ISREG(os.stat(link).st_mode):
                    files.append(os.path.realpath(os.readlink(link)))
            except OSError:  # closed, not ours to read, or no /proc: nothing to ignore
                continue
    return files


class Filter(watchfiles.DefaultFilter):
    """watchfiles' default filter, plus our ignored directories and names, the paths
    ``ignore_paths`` (and what is under them) and the files ``ignore_files``."""

    def __init__(self, ignore_paths: Sequence[Path], ignore_files: Sequence[str] = ()) -> None:
        super().__init__(
            ignore_dirs=IGNORE_DIRS,
            ignore_entity_patterns=(*self.ignore_entity_patterns,
                                    *map(fnmatch.translate, defaults.WATCH_IGNORE_NAMES)),
            ignore_paths=[str(p) for p in ignore_paths])
        self.files = {os.path.realpath(f) for f in ignore_files}
        self.file_names = {os.path.basename(f) for f in self.files}

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        # The name first: a realpath (a few syscalls) only for a likely match.
        if os.path.basename(path) in self.file_names and os.path.realpath(path) in self.files:
            return False
        return super().__call__(change, path)


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
    """(directories to watch recursively, to watch alone) for ``paths`` (default: ``base``),
    those that exist.

    The default directory's own files are watched alone and its subdirectories one by
    one, skipping ignored ones: inotify then never holds a watch per directory of a
    virtualenv or node_modules (thousands; the user's watch limit).
    """
    if paths:
        return [p.absolute() for p in paths if os.path.exists(p)], []
    try:
        children = sorted(base.iterdir())
    except OSError:  # the Procfile's directory itself is gone or unreadable
        return [], []
    deep = [d for d in children if d.is_dir() and d.name not in IGNORE_DIRS
            and not is_virtualenv(d) and d.absolute() != state_dir.absolute()]
    return deep, [base]


#: What a watched root is: its path and the file it names now (device, inode).
Identity = tuple[str, int, int]


def identities(paths: Iterable[Path]) -> frozenset[Identity]:
    """Each existing path with its (device, inode): a directory deleted and made anew
    has the same path and another inode."""
    found = set()
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            found.add((str(path), st.st_dev, st.st_ino))
    return frozenset(found)


class Roots:
    """What one watch covers: the roots watched recursively, alone, and who they are."""

    def __init__(self, deep: Sequence[Path], flat: Sequence[Path]) -> None:
        self.deep, self.flat = list(deep), list(flat)
        self.ids = identities([*self.deep, *self.flat])


class Watcher:
    """Gathers changes from watchfiles and runs one reload at a time for them."""

    def __init__(self, sup: Supervisor, paths: Sequence[Path] = ()) -> None:
        self.sup = sup
        self.base = sup.settings.procfile.parent.absolute()
        self.paths = tuple(paths)
        self.state_dir = sup.settings.state_dir.absolute()
        self.own = own_output()  # read now: a file we were started with, not a later one
        self.skip_denied = False
        """Set once an unreadable path was said: watchfiles then leaves out every such path."""
        self.root_deleted = False
        """A root was seen deleted: the next look starts the watch over."""
        self.pending: dict[str, None] = {}  # ordered set of changed paths
        self.wake = asyncio.Event()
        self.reloads = 0

    def look(self) -> Roots:
        """The roots to watch now (the Procfile directory's subdirectories change)."""
        return Roots(*roots(self.base, self.paths, self.state_dir))

    def filter_for(self, now: Roots) -> Filter:
        venvs = [d for d in now.deep + now.flat for d in _children(d) if is_virtualenv(d)]
        return Filter([self.state_dir, *venvs], self.own)

    async def run(self) -> None:
        """Watch until cancelled (a duty of the supervisor's task group)."""
        now = self.look()
        where = ", ".join(str(p) for p in now.deep + now.flat) or "nothing (no such path yet)"
        self.sup.sink.system(f"watching {where} for changes")
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(now))
            group.create_task(self._apply())

    async def _follow(self, now: Roots) -> None:
        """Watch ``now``'s roots; start over each time they change."""
        while True:
            moved = asyncio.Event()
            keep = self.filter_for(now)
            async with asyncio.TaskGroup() as group:
                if now.deep:
                    group.create_task(self._collect(now.deep, True, keep, moved))
                if now.flat:
                    group.create_task(self._collect(now.flat, False, keep, moved))
                checker = group.create_task(self._recheck(now, moved))
            now = checker.result()

    async def _recheck(self, now: Roots, moved: asyncio.Event) -> Roots:
        """Polls (inotify has no event for a directory made anew where one was): returns
        the roots, and sets ``moved``, once they are not ``now``'s."""
        while True:
            await asyncio.sleep(defaults.WATCH_RECHECK_S)
            later = self.look()
            # A root seen deleted starts over too: a directory made anew may get the
            # inode of the one deleted.
            if later.ids != now.ids or self.root_deleted:
                self.root_deleted = False
                new = sorted(self._relative(path) for path, _, _ in later.ids - now.ids)
                if new:
                    self.sup.sink.system(f"watch: watching {describe(new)} (new or re-created)")
                moved.set()
                return later

    async def _collect(self, paths: Sequence[Path], recursive: bool, keep: Filter,
                       stop: asyncio.Event) -> None:
        """Gather the changes under ``paths`` into ``pending`` until ``stop``."""
        mine = {str(p) for p in paths}
        while not stop.is_set():
            try:
                async for changes in watchfiles.awatch(
                        *paths, watch_filter=keep, recursive=recursive, stop_event=stop,
                        step=defaults.WATCH_STEP_MS, debounce=defaults.WATCH_DEBOUNCE_MS,
                        ignore_permission_denied=self.skip_denied):
                    for change, path in sorted(changes, key=lambda c: c[1]):
                        self.pending[self._relative(path)] = None
                        if change is watchfiles.Change.deleted and path in mine:
                            self.root_deleted = True
                    self.wake.set()
            except PermissionError as e:
                if self.skip_denied:
                    raise
                self.skip_denied = True
                self.sup.sink.system(f"watch: cannot read {_denied(e)} (permission denied); "
                                     "it and any other unreadable path are left out, the "
                                     "rest is watched")
            except FileNotFoundError:  # a root went between the look and the watch
                await stop.wait()  # the next look sees it gone

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


def _denied(e: PermissionError) -> str:
    """The path in watchfiles' ``Permission denied (os error 13) about ["/proc/1/..."]``."""
    found = re.search(r'about \["(.*?)"', str(e))
    return found.group(1) if found else (e.filename or str(e))


def _children(path: Path) -> list[Path]:
    try:
        return [c for c in path.iterdir() if c.is_dir()]
    except OSError:
        return []
