"""Issue 26 item 3: files in the state dir were written through symlinks, and a state dir
(or its ``logs/``) owned by another user was accepted.

Symbolic links planted before ``up -d`` at every file the cluster writes must never be
written through: the target keeps its content and its mode, and the cluster either
refuses in one line (a file it writes in place: the lock, the logs) or replaces the link
(a file it publishes by rename: the registry, the console URL, the xDS bootstrap). A
state dir, ``logs/`` or ``private/`` that another user owns is refused in one line,
exit 1, before anything starts. Real ``devcluster up -d`` processes throughout.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devcluster.statedir import Layout, layout

GREETER = "python -m devcluster.greeter --port $PORT"
UP = ("up", "-d", "-p", "0", "--grace", "1", "-c", "greeter=1")
NOBODY = 65534

Cli = Callable[..., subprocess.CompletedProcess[str]]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


#: Where a link is planted, and what the cluster must do about it: "refuse" (written in
#: place: `up` says so in one line, exit 1) or "replace" (published by rename).
PLANTED: dict[str, tuple[Callable[[Layout], Path], str]] = {
    "lock": (lambda w: w.lock, "refuse"),
    "registry lock": (lambda w: w.registry_lock, "refuse"),
    "instance log": (lambda w: w.log("greeter.1"), "refuse"),
    "merged log": (lambda w: w.log(None), "refuse"),
    "supervisor.out": (lambda w: w.daemon_out, "refuse"),
    "console url": (lambda w: w.console_url, "replace"),
    "xds bootstrap": (lambda w: w.xds_bootstrap, "replace"),
    "registry": (lambda w: w.registry, "replace"),
    "registry temp": (lambda w: w.registry_tmp, "replace"),
    "events": (lambda w: w.events, "replace"),
}


@pytest.mark.parametrize("what", list(PLANTED))
def test_a_planted_link_is_never_written_through(
        what: str, run_cli: Cli, write_procfile: Callable[..., Path], tmp_path: Path) -> None:
    write_procfile(f"greeter: {GREETER}")
    where = layout(tmp_path / ".devcluster")
    pick, expected = PLANTED[what]
    link = pick(where)
    for d in {where.root, link.parent}:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o640)
    link.symlink_to(victim)
    up = run_cli(*UP, "--console")
    try:
        if expected == "refuse":
            assert up.returncode == 1, up.stderr
            line = one_line(up)
            assert str(link) in line and "symbolic link" in line and "remove it" in line
        else:
            assert up.returncode == 0, up.stderr
            assert not link.is_symlink()
    finally:
        if up.returncode == 0:
            assert run_cli("down").returncode == 0
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640


def test_the_private_dir_is_the_users_own_0700(run_cli: Cli, write_procfile: Callable[..., Path],
                                                tmp_path: Path,
                                                wait_until: Callable[..., object]) -> None:
    write_procfile(f"greeter: {GREETER}")
    where = layout(tmp_path / ".devcluster")
    where.private.mkdir(parents=True)
    where.private.chmod(0o755)  # ours, opened up: closed again rather than refused
    up = run_cli(*UP, "--console")
    assert up.returncode == 0, up.stderr
    try:
        assert stat.S_IMODE(where.private.lstat().st_mode) == 0o700
        # The xDS server starts just after `up -d` returned (its bootstrap comes then).
        wait_until(lambda: where.xds_bootstrap.exists(), 10, "the xDS bootstrap")
        for path in (where.lock, where.socket, where.console_url, where.xds_bootstrap):
            assert path.parent == where.private and os.path.lexists(path), path
        assert stat.S_IMODE(where.console_url.stat().st_mode) == 0o600
        assert stat.S_IMODE(os.stat(where.socket).st_mode) == 0o600
    finally:
        assert run_cli("down").returncode == 0


def test_a_private_dir_that_is_a_link_is_refused(run_cli: Cli, write_procfile: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    write_procfile(f"greeter: {GREETER}")
    where = layout(tmp_path / ".devcluster")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    where.root.mkdir(mode=0o700)
    where.private.symlink_to(elsewhere)
    up = run_cli(*UP)
    assert up.returncode == 1
    assert f"{where.private} (a symbolic link)" in one_line(up)
    assert list(elsewhere.iterdir()) == []


def _foreign(where: Layout, which: str) -> Path:
    """Make ``which`` of ``where`` another user's (as an attacker would leave it)."""
    if which in ("state dir", "sticky state dir"):
        where.root.mkdir()
        where.root.chmod(0o1777 if which.startswith("sticky") else 0o700)
        os.chown(where.root, NOBODY, NOBODY)
        return where.root
    where.root.mkdir(mode=0o700)
    d = where.logs if which == "logs" else where.private
    d.mkdir()
    d.chmod(0o777 if which == "logs" else 0o700)
    os.chown(d, NOBODY, NOBODY)
    return d


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
@pytest.mark.parametrize("which", ["state dir", "sticky state dir", "logs", "private"])
def test_a_directory_of_another_user_is_refused(
        which: str, run_cli: Cli, write_procfile: Callable[..., Path], tmp_path: Path) -> None:
    write_procfile(f"greeter: {GREETER}")
    where = layout(tmp_path / ".devcluster")
    foreign = _foreign(where, which)
    up = run_cli(*UP)
    assert up.returncode == 1
    line = one_line(up)
    assert f"{foreign} belongs to uid {NOBODY}" in line and "use your own --state-dir" in line
    assert not os.path.lexists(where.lock)  # nothing was taken
    assert not os.path.lexists(where.registry)
    assert foreign.stat().st_uid == NOBODY  # left as it was


def test_a_log_dir_others_can_write_is_refused(run_cli: Cli, write_procfile: Callable[..., Path],
                                               tmp_path: Path) -> None:
    write_procfile(f"greeter: {GREETER}")
    where = layout(tmp_path / ".devcluster")
    where.logs.mkdir(parents=True)
    where.root.chmod(0o700)
    where.logs.chmod(0o777)  # anyone could plant a link at the next instance's log
    up = run_cli(*UP)
    assert up.returncode == 1
    line = one_line(up)
    assert f"log dir {where.logs} is writable by other users (mode 0777)" in line
    assert stat.S_IMODE(where.logs.stat().st_mode) == 0o777
