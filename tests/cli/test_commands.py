"""The everyday commands through the one parser: their exact answers (text, JSON, the
error line and exit status), the same by ``devcluster`` and ``python -m devcluster``,
``--state-dir ""`` meaning the default everywhere, and no heavy import on the way
(typer and rich once cost a command three times what its work does)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env

GREETER = "python -m devcluster.greeter --port $PORT"
SCRIPT = Path(sys.executable).parent / "devcluster"


def _module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devcluster", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


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
    directory = tmp_path_factory.mktemp("commands")
    (directory / "Procfile").write_text(f"greeter: {GREETER}\n")
    (directory / "sub").mkdir()
    assert devcluster_cli("up", "-d", "-p", "0", "-c", "greeter=2", cwd=directory).returncode == 0
    try:
        yield directory
    finally:
        devcluster_cli("down", "--grace", "1", cwd=directory)


#: args -> (exit status, stdout or None to skip, a fragment of the one stderr line).
ANSWERS: dict[tuple[str, ...], tuple[int, str | None, str]] = {
    ("weight", "greeter.1", "3"): (0, "greeter.1: weight 3\n", ""),
    ("disable", "greeter.2"): (0, "greeter.2: disabled\n", ""),
    ("enable", "greeter"): (0, "greeter.1: enabled\ngreeter.2: enabled\n", ""),
    ("weight", "greeter", "1"): (0, "greeter.1: weight 1\ngreeter.2: weight 1\n", ""),
    ("weight", "nope", "2"): (1, "", "devcluster: error: unknown instance 'nope'"),
    ("weight", "greeter", "--", "abc"): (2, "", "weight must be an integer 0..1000"),
    ("weight", "../x", "2"): (2, "", "is not an instance name"),
    ("kill",): (2, "", "name an instance or process type to kill, or pass --all"),
    ("kill", "nope"): (1, "", "unknown instance 'nope'; known instances: greeter"),
    ("ps", "--bogus"): (2, "", "unrecognized arguments: --bogus (see `devcluster ps --help`)"),
    ("ps", "--js"): (2, "", "unrecognized arguments: --js"),  # no abbreviations: one spelling
    ("ps", "-f", "Procfile"): (2, "", "-f FILE goes before the command"),
    ("sacle", "greeter=2"): (2, "", "no such command 'sacle'; did you mean 'scale'?"),
    ("weight", "greeter.1"): (2, "", "the following arguments are required: WEIGHT"),
}


@pytest.mark.parametrize("args", list(ANSWERS), ids=" ".join)
def test_answer(args: tuple[str, ...], cluster_dir: Path) -> None:
    code, stdout, fragment = ANSWERS[args]
    result = _module(*args, cwd=cluster_dir)
    assert result.returncode == code, result.stderr
    if stdout is not None:
        assert result.stdout == stdout
    if code:
        assert result.stderr.startswith("devcluster: error: ") and fragment in result.stderr
        assert len(result.stderr.splitlines()) == 1
    else:
        assert result.stderr == ""


@pytest.mark.parametrize("args", [("registry", "--json"), ("weight", "greeter", "2", "--json"),
                                  ("disable", "greeter.2", "--json"), ("ps", "--json")],
                         ids=" ".join)
def test_the_script_and_the_module_answer_alike(args: tuple[str, ...], cluster_dir: Path) -> None:
    by_script, by_module = _script(*args, cwd=cluster_dir), _module(*args, cwd=cluster_dir)
    assert (by_script.returncode, by_script.stderr) == (by_module.returncode, by_module.stderr)
    a, b = json.loads(by_script.stdout), json.loads(by_module.stdout)
    if args[0] == "ps":  # live stats move between two runs; names and pids do not
        assert [(r["name"], r["pid"]) for r in a] == [(r["name"], r["pid"]) for r in b]
    else:
        assert _unstamped(a) == _unstamped(b)


def test_ps_table_and_kill_lines(cluster_dir: Path) -> None:
    table = _module("-f", "Procfile", "ps", cwd=cluster_dir).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "PID", "ADDRESS", "WEIGHT", "UPTIME",
                                "RESTARTS", "CPU%", "RSS"]
    assert [line.split()[0] for line in table[1:]] == ["greeter.1", "greeter.2"]
    killed = _module("kill", "greeter.2", "--json", cwd=cluster_dir)
    assert killed.returncode == 0, killed.stderr
    assert [(r["name"], r["state"]) for r in json.loads(killed.stdout)] == [("greeter.2", "killed")]
    again = _module("kill", "greeter.2", cwd=cluster_dir)
    assert again.stdout == "greeter.2 is already killed; nothing to do\n"
    started = _module("start", "greeter.2", cwd=cluster_dir)
    assert started.returncode == 0 and started.stdout.startswith("greeter.2: serving on 127.0.0.1:")


@pytest.mark.parametrize("args", [("ps", "--json"), ("registry",), ("events",),
                                  ("logs", "-n", "1"), ("scale", "greeter=2", "--json"),
                                  ("kill", "nope")], ids=" ".join)
def test_empty_state_dir_is_the_default_one(args: tuple[str, ...], cluster_dir: Path) -> None:
    """``--state-dir ""`` is ``.devcluster`` beside the Procfile, for every command (it
    was `.` for some: "no cluster running")."""
    here = _module(*args, "--state-dir", "", cwd=cluster_dir)
    below = _module("-f", "../Procfile", *args, "--state-dir", "", cwd=cluster_dir / "sub")
    for result in (here, below):
        assert "no cluster" not in result.stderr, result.stderr
        assert result.returncode == (1 if args[0] == "kill" else 0), result.stderr


def test_down_with_an_empty_state_dir_stops_the_cluster(
        tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """`down --state-dir ""` once looked in `.` and said "no cluster running"."""
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    assert run_cli("up", "-d", "-p", "0").returncode == 0
    try:
        down = run_cli("down", "--grace", "1", "--state-dir", "", "--json")
        assert down.returncode == 0, down.stderr
        assert [r["name"] for r in json.loads(down.stdout)] == ["greeter"]
    finally:
        run_cli("down", "--grace", "1")
    assert run_cli("ps").returncode == 1  # gone


#: The everyday commands; those that talk to the supervisor load grpc, the rest do not.
EVERYDAY = [("ps",), ("registry", "--json"), ("weight", "greeter.1", "1"),
            ("enable", "greeter.1"), ("events",), ("logs", "-n", "1"),
            ("meta", "greeter.1", "zone=a"), ("scale", "greeter=2"), ("stop", "nope"),
            ("start", "--no-wait", "nope")]
HEAVY = {"typer", "rich", "click", "textual", "aiohttp"}
SUPERVISOR_SIDE = {"devcluster.api", "devcluster.daemon", "devcluster.supervisor.runtime",
                   "devcluster.launch"}


@pytest.mark.parametrize("args", EVERYDAY, ids=" ".join)
def test_no_heavy_import(args: tuple[str, ...], cluster_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "devcluster", *args],
                            cwd=cluster_dir, env=cli_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode in (0, 1), result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
    assert not imported & SUPERVISOR_SIDE
    other_commands = {m for m in imported if m.startswith("devcluster.cli.")} - {
        "devcluster.cli.entry", "devcluster.cli.runner", "devcluster.cli.spec",
        "devcluster.cli.views", "devcluster.cli.place", "devcluster.cli.interrupt",
        "devcluster.cli.argtypes"}  # the parser's number types
    assert len(other_commands) <= 1, other_commands  # the command's own module only
    if args[0] in ("registry", "weight", "enable", "meta", "events", "logs"):
        assert "grpc" not in imported


def test_importing_the_cli_imports_nothing_heavy() -> None:
    code = ("import sys; import devcluster.cli.runner, devcluster.cli.spec; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'grpc', 'typer', 'rich', 'click', 'psutil', 'google'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"
