"""What `up --watch` ignores: its own output files (whatever their names, reached by
any path), ``*.log`` and the state dir; everything else passes (issue 26 item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from watchfiles import Change

from devcluster.supervisor.watch import Filter, identities


def test_logs_own_output_and_state_dir_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "up.out"
    out.write_text("")
    (tmp_path / "link").symlink_to(tmp_path)
    keep = Filter([tmp_path / ".devcluster"], [str(out)])
    assert not keep(Change.modified, str(out))
    assert not keep(Change.modified, str(tmp_path / "link" / "up.out"))  # same file
    assert not keep(Change.modified, str(tmp_path / "server.log"))
    assert not keep(Change.added, str(tmp_path / ".devcluster" / "registry.json"))
    assert not keep(Change.added, str(tmp_path / "sub" / ".devcluster" / "x"))
    assert keep(Change.modified, str(tmp_path / "sub" / "up.out"))  # another file of that name
    assert keep(Change.modified, str(tmp_path / "app.py"))
    assert keep(Change.modified, str(tmp_path / "logger.py"))


def test_own_output_names_the_files_stdout_and_stderr_go_to(tmp_path: Path) -> None:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    code = "from devcluster.supervisor.watch import own_output; print(own_output())"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=stderr, check=True)
    said = out.read_text()
    assert repr(os.path.realpath(out)) in said and repr(os.path.realpath(err)) in said, said


def test_a_directory_made_anew_is_another_identity(tmp_path: Path) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "keep").write_text("so the next mkdir cannot reuse this inode at once")
    before = identities([gen])
    os.rename(gen, tmp_path / "old")
    gen.mkdir()
    assert identities([gen]) != before
    assert identities([tmp_path / "missing"]) == frozenset()
