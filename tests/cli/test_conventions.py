"""One CLI convention throughout: ``-f`` as docker compose has it, ``--json`` on every
command that reports a result or a state, and one rule for exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]
GREETER = "python -m devcluster.greeter --port $PORT"


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_dash_f_before_the_command_is_the_procfile(tmp_path: Path, run_cli: Cli) -> None:
    """``devcluster -f other/Procfile up`` and ``--procfile`` after the command agree."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "Procfile").write_text(f"greeter: {GREETER}\n")
    try:
        rows = json.loads(_ok(run_cli("-f", "other/Procfile", "up", "-d", "-p", "0", "--json")))
        assert [r["name"] for r in rows] == ["greeter"]
        assert (other / ".devcluster").is_dir()  # the state dir is beside that Procfile
        by_long = json.loads(_ok(run_cli("ps", "--procfile", "other/Procfile", "--json")))
        by_file = json.loads(_ok(run_cli("ps", "--file", "other/Procfile", "--json")))
        assert [r["name"] for r in by_long] == [r["name"] for r in by_file] == ["greeter"]
    finally:
        _ok(run_cli("-f", "other/Procfile", "down", "--grace", "1"))


def test_dash_f_after_a_command_says_where_it_goes(tmp_path: Path, run_cli: Cli) -> None:
    result = run_cli("up", "-f", "Procfile")
    assert result.returncode == 2
    assert "devcluster -f FILE up" in result.stderr and "--procfile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [("up", "--json"), ("demo", "--lesson", "--json")])
def test_json_that_means_nothing_is_refused(args: tuple[str, ...], tmp_path: Path,
                                            run_cli: Cli) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    result = run_cli(*args, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("devcluster: error: ") and "--json" in result.stderr
    assert not (tmp_path / ".devcluster").exists()  # nothing started


def test_every_verb_speaks_json(tmp_path: Path, run_cli: Cli) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    _ok(run_cli("up", "-d", "-p", "0", "-c", "greeter=2"))
    try:
        weight = json.loads(_ok(run_cli("weight", "greeter.1", "3", "--json")))
        assert [(r["name"], r["weight"]) for r in weight] == [("greeter.1", 3)]
        disabled = json.loads(_ok(run_cli("disable", "greeter", "--json")))
        assert {(r["name"], r["enabled"]) for r in disabled} == {("greeter.1", False),
                                                                  ("greeter.2", False)}
        enabled = json.loads(_ok(run_cli("enable", "greeter.2", "--json")))
        assert [(r["name"], r["enabled"]) for r in enabled] == [("greeter.2", True)]
        for verb, state in (("pause", "paused"), ("resume", "serving"), ("stop", "stopped"),
                            ("start", "serving"), ("restart", "serving"), ("kill", "killed")):
            rows = json.loads(_ok(run_cli(verb, "greeter.2", "--json")))
            assert [(r["name"], r["state"]) for r in rows] == [("greeter.2", state)], verb
        scaled = json.loads(_ok(run_cli("scale", "greeter=1", "--json")))
        assert [r["name"] for r in scaled] == ["greeter.1"]
        lines = _ok(run_cli("logs", "--json", "-n", "5")).splitlines()
        assert lines and all({"time", "instance", "line"} <= json.loads(x).keys() for x in lines)
        one = _ok(run_cli("logs", "greeter.1", "--json", "-n", "3")).splitlines()
        assert one and {json.loads(x)["instance"] for x in one} == {"greeter.1"}
    finally:
        down = json.loads(_ok(run_cli("down", "--grace", "1", "--json")))
    assert {r["name"] for r in down} == {"greeter.1"}


def test_no_wait_only_where_a_verb_waits(tmp_path: Path, run_cli: Cli) -> None:
    """--no-wait is offered by the verbs that wait (start, restart, scale) and no other."""
    for verb in ("start", "restart", "scale"):
        assert "--no-wait" in _ok(run_cli(verb, "--help"))
    for verb in ("kill", "stop", "pause", "resume"):
        assert "--no-wait" not in _ok(run_cli(verb, "--help"))


def test_a_platform_without_posix_gets_one_line(tmp_path: Path) -> None:
    """As on Windows: no fcntl. One line naming what is missing, exit 1, no traceback."""
    code = ("import sys; sys.modules['fcntl'] = None; sys.argv = ['devcluster', 'ps']\n"
            "from devcluster.cli.entry import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("devcluster: error: ") and "fcntl" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ps_says_how_readiness_was_decided(tmp_path: Path, run_cli: Cli) -> None:
    """A greeter answers gRPC health; a plain TCP server is only connected to."""
    tcp = ("python -c \"import os, socket, time; s = socket.socket(); "
           "s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); time.sleep(60)\"")
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\ntcp: {tcp}\n")
    _ok(run_cli("up", "-d", "-p", "0"))
    try:
        rows = {r["name"]: r for r in json.loads(_ok(run_cli("ps", "--json")))}
        assert rows["greeter"]["ready"] == "health check"
        assert rows["tcp"]["ready"] == "TCP connect"
        _ok(run_cli("stop", "tcp"))
        assert json.loads(_ok(run_cli("ps", "--json")))[1]["ready"] is None  # not running
    finally:
        _ok(run_cli("down", "--grace", "1"))
