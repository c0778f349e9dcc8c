"""The fast path of the common commands answers exactly as the typer CLI does, without
importing typer or rich (they cost a command three times what its work does)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env

GREETER = "python -m devcluster.greeter --port $PORT"
TYPER_PATH = "import sys; from devcluster.cli.typerapp import main; sys.argv[0] = 'devcluster'; main()"


def _fast(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devcluster", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=60)


def _typer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", TYPER_PATH, *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=60)


def _unstamped(value: object) -> object:
    if isinstance(value, dict):
        return {k: _unstamped(v) for k, v in value.items() if k != "updated_at"}
    if isinstance(value, list):
        return [_unstamped(v) for v in value]
    return value


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory,
                devcluster_cli: Callable[..., subprocess.CompletedProcess[str]]
                ) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("fast")
    (directory / "Procfile").write_text(f"greeter: {GREETER}\n")
    assert devcluster_cli("up", "-d", "-p", "0", "-c", "greeter=2", cwd=directory).returncode == 0
    try:
        yield directory
    finally:
        devcluster_cli("down", "--grace", "1", cwd=directory)


@pytest.mark.parametrize("args", [
    ("registry", "--json"),
    ("registry",),
    ("weight", "greeter.1", "3"),
    ("weight", "greeter", "2", "--json"),
    ("disable", "greeter.2", "--json"),
    ("enable", "greeter.2"),
    ("weight", "nope", "2"),             # unknown instance: exit 1
    ("weight", "greeter", "--", "abc"),  # bad weight: exit 2
    ("weight", "../x", "2"),             # a path is not a name: exit 2
    ("kill",),                           # no name: exit 2
    ("kill", "nope"),                    # exit 1
], ids=" ".join)
def test_same_answer_as_the_typer_cli(args: tuple[str, ...], cluster_dir: Path) -> None:
    fast, slow = _fast(*args, cwd=cluster_dir), _typer(*args, cwd=cluster_dir)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr)
    if "--json" in args:  # the same records; a write stamps its own time
        assert _unstamped(json.loads(fast.stdout)) == _unstamped(json.loads(slow.stdout))
    else:
        assert fast.stdout == slow.stdout
    assert "Traceback" not in fast.stderr


def test_ps_same_rows_and_table(cluster_dir: Path) -> None:
    fast = json.loads(_fast("ps", "--json", cwd=cluster_dir).stdout)
    slow = json.loads(_typer("ps", "--json", cwd=cluster_dir).stdout)
    assert [sorted(r) for r in fast] == [sorted(r) for r in slow]
    assert [(r["name"], r["pid"]) for r in fast] == [(r["name"], r["pid"]) for r in slow]
    table = _fast("-f", "Procfile", "ps", cwd=cluster_dir).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "PID", "ADDRESS", "WEIGHT", "UPTIME",
                                "RESTARTS", "CPU%", "RSS"]
    assert [line.split()[0] for line in table[1:]] == ["greeter.1", "greeter.2"]


def test_kill_same_answer(cluster_dir: Path) -> None:
    fast = _fast("kill", "greeter.2", "--json", cwd=cluster_dir)
    assert fast.returncode == 0, fast.stderr
    assert [(r["name"], r["state"]) for r in json.loads(fast.stdout)] == [("greeter.2", "killed")]
    again = _typer("kill", "greeter.2", cwd=cluster_dir)
    assert again.stdout == _fast("kill", "greeter.2", cwd=cluster_dir).stdout
    assert "already killed" in again.stdout


@pytest.mark.parametrize("args", [("registry", "--json"), ("ps",), ("weight", "greeter.1", "1")])
def test_no_typer_or_rich(args: tuple[str, ...], cluster_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "devcluster", *args],
                            cwd=cluster_dir, env=cli_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] in {"typer", "rich", "click"}}


def test_what_it_does_not_know_goes_to_the_typer_cli(cluster_dir: Path) -> None:
    """Help and unknown options get typer's answers (a help page, a usage error)."""
    assert "Example: devcluster ps" in _fast("ps", "--help", cwd=cluster_dir).stdout
    bogus = _fast("ps", "--bogus", cwd=cluster_dir)
    assert bogus.returncode == 2 and "--bogus" in bogus.stderr
