"""The fork server leans on private CPython functions: a Python that changes them must
fail here, loudly, naming what is gone (not later, inside an instance)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from devcluster.supervisor import forkserver


def _pythons() -> list[str]:
    """CPython 3.11+ interpreters on this machine besides ours (PATH, pyenv's versions):
    the fork server runs under the Procfile's python, not necessarily the tests' one."""
    found = {shutil.which(f"python3.{minor}") for minor in range(11, 16)}
    found |= set(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[1-9]*/bin/python3")))
    usable = set()
    for python in filter(None, found):
        check = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.stdout.strip() == "True":  # a pyenv shim of no installed version: not one
            usable.add(python)
    return sorted(usable)


_OTHERS = _pythons()


def test_this_python_has_every_private_function_the_fork_server_uses() -> None:
    problem = forkserver.missing_private()
    assert problem is None, f"{problem} (devcluster/supervisor/forkserver.py: PRIVATE_NEEDS)"


@pytest.mark.parametrize("python", _OTHERS)
def test_every_python_found_has_them_too(python: str) -> None:
    # The fork server runs under the Procfile's python, not ours: ask each one found.
    script = (f"import runpy, sys; sys.argv = ['x']; "
              f"m = runpy.run_path({forkserver.__file__!r}, run_name='probe'); "
              "print(m['missing_private']() or 'ok')")
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.stdout.strip() == "ok", f"{python}: {out.stdout.strip() or out.stderr}"


def test_a_missing_one_is_named_with_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.delattr(threading, "_shutdown")
    problem = forkserver.missing_private()
    assert problem is not None
    assert "threading._shutdown" in problem
    assert ".".join(map(str, sys.version_info[:2])) in problem
    assert "remove preload" in problem
