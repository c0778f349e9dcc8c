"""Launching fork servers, and the background supervisor's first step: launch them early.

``python -m devcluster.daemon`` calls :func:`begin` before its own imports (grpc for the
control plane, asyncio, the supervisor): it reads the settings from stdin, makes the
process the child subreaper (forked instances must be re-parented to it) and launches
the fork server of every preloaded type, so the fork servers' imports run on the other
core while the supervisor imports. :class:`devcluster.supervisor.preload.Preloader` adopts them
(:func:`started`). Light on purpose: stdlib, the Procfile parser, nothing that imports
asyncio or grpc.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devcluster import defaults
from devcluster.config.preloadcheck import python_command
from devcluster.supervisor import early, watchdog
from devcluster.supervisor.request import BootView, boot_view

#: Per-instance variables the fork server's own environment leaves out.
_PER_INSTANCE = ("PORT", "PS", defaults.ENV_INSTANCE)
#: A variable that only reserves room in the fork server's environment block, so an
#: instance can show its own environment in /proc (see devcluster.supervisor.forkserver).
_ENV_ROOM, _ROOM_SPARE = "DEVCLUSTER_ENV_ROOM", 1024
_SERVER_SCRIPT = str(Path(__file__).with_name("forkserver.py"))
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
_PR_SET_CHILD_SUBREAPER = 36

#: A fork server's identity: its environment (a digest), interpreter, sys.path[0], modules.
Key = tuple[str, ...]
Launched = tuple["subprocess.Popen[bytes]", socket.socket]

_settings_text: str | None = None
_started: dict[Key, Launched] = {}
_prespawned: dict[str, Prespawned] = {}


@dataclass(frozen=True)
class Prespawned:
    """An instance asked of a fork server before the supervisor was up: the request as
    sent (the supervisor uses it only if it would send the same), our ends of its pipes,
    and its place among the fork server's replies."""

    key: Key
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    out_fd: int
    sync_fd: int
    position: int


def server_key(modules: Sequence[str], argv: Sequence[str],
               env: Mapping[str, str], cwd: str) -> tuple[Key, str, str] | None:
    """(key, interpreter, sys.path[0]) of the fork server that can run ``argv``; None
    when ``argv`` is not ``python -m MODULE``/``python FILE.py`` or python is not found."""
    shape = python_command(argv)
    python = shutil.which(argv[0], path=env.get("PATH")) if argv else None
    if shape is None or python is None:
        return None
    path0 = cwd if shape[0] == "-m" else os.path.dirname(
        os.path.realpath(os.path.join(cwd, shape[1])))
    # Types that would give their fork server the same environment share one (the demo's
    # server1..3: one interpreter imports grpc, not three).
    own = sorted((k, v) for k, v in env.items() if k not in _PER_INSTANCE)
    shared = hashlib.sha256(json.dumps(own).encode()).hexdigest()[:16]
    return (shared, python, path0, *modules), python, path0


def server_env(env: Mapping[str, str]) -> dict[str, str]:
    """The fork server's environment: the type's, without what is per instance, and
    room for an instance's own environment to be shown in /proc."""
    own = {k: v for k, v in env.items() if k not in _PER_INSTANCE}
    own[defaults.ENV_SUPERVISOR] = watchdog.mark()  # the orphan watchdog's to find
    own[_ENV_ROOM] = "." * (_ROOM_SPARE + sum(len(k) + len(v) + 2 for k, v in env.items()
                                              if k in _PER_INSTANCE))
    return own


def launch(python: str, path0: str, modules: Sequence[str], env: Mapping[str, str],
           cwd: str) -> Launched:
    """Start a fork server (with PDEATHSIG, in its own session); (process, our socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [python, _SERVER_SCRIPT, str(theirs.fileno()), str(os.getpid()), path0, *modules]
    if _SETPRIV:
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    try:
        proc = subprocess.Popen(argv, env=server_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, pass_fds=[theirs.fileno()],
                                start_new_session=True)
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return proc, ours


def begin(argv: Sequence[str]) -> None:
    """The daemon's first step (see the module's docstring). Never fails: whatever goes
    wrong here, the daemon reports it itself, and fork servers then start on demand."""
    global _settings_text
    args = list(argv[2:] if argv[:1] == ["--state-dir"] else argv)
    _settings_text = args[0] if args else sys.stdin.read()
    with contextlib.suppress(Exception):
        _launch_all(boot_view(_settings_text))


def asked_ahead() -> bool:
    """Whether :func:`begin` asked for instances (it checked their ports itself: they
    may be listening on them by now)."""
    return bool(_prespawned)


def settings_text() -> str | None:
    """The settings :func:`begin` read from stdin (None: it did not run)."""
    return _settings_text


def started() -> tuple[dict[Key, Launched], dict[str, Prespawned]]:
    """The fork servers :func:`begin` launched and the instances it asked them for (by
    name), handed over once."""
    found, asked = dict(_started), dict(_prespawned)
    _started.clear()
    _prespawned.clear()
    return found, asked


def request(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bytes:
    """One request to a fork server (see devcluster.supervisor.forkserver)."""
    # The supervisor's mark (the orphan watchdog's to find): a forked instance's
    # environment is the one asked for here, not the fork server's.
    env = {**env, defaults.ENV_SUPERVISOR: watchdog.mark()}
    return json.dumps({"argv": list(argv), "env": env, "cwd": cwd}).encode()


def _launch_all(view: BootView) -> None:
    types = view.preloaded
    if not types or not sys.platform.startswith("linux"):
        return
    from devcluster.config import procfile
    ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # before any child
    _, _, specs = procfile.load(view.procfile, view.env_files, view.scale, view.base_port)
    cwd = str(view.procfile.parent.resolve())
    ahead = early.may_start_ahead(view, specs)
    sent: dict[Key, int] = {}
    for spec in specs:
        conf = types.get(spec.process_type)
        if conf is None:
            continue
        env = procfile.instance_environment(spec, str(Path(sys.executable).parent),
                                            conf.env, conf.grace)
        argv = procfile.command_argv(spec.command, env)
        found = server_key(conf.preload, argv, env, cwd)
        if found is None:
            continue
        key = found[0]
        if key not in _started:
            _started[key] = launch(found[1], found[2], conf.preload, env, cwd)
        if ahead and sent.get(key, 0) >= 0:
            sent[key] = _ask(key, spec.name, argv, env, cwd, sent.get(key, 0))


def _ask(key: Key, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
         position: int) -> int:
    """Send one instance's request now (it waits in the socket while the fork server
    imports); the next position, or -1 once the socket is full (the rest start later)."""
    _, sock = _started[key]
    out_r, out_w = os.pipe()
    sync_r, sync_w = os.pipe()
    try:
        socket.send_fds(sock, [request(argv, env, cwd)], [out_w, sync_w])
    except OSError:
        os.close(out_r)
        os.close(sync_r)
        return -1
    finally:
        os.close(out_w)
        os.close(sync_w)
    _prespawned[name] = Prespawned(key, tuple(argv), dict(env), cwd, out_r, sync_r, position)
    return position + 1
