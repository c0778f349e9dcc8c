"""Every command's ``--help`` works, as a new user runs it: a real ``devcluster`` process.

The commands come from walking the typer app, so a command added later is covered
without editing this file. A help text with brackets once crashed every ``--help``
under a newer typer (rich read ``[/prefix]`` as a closing tag); nothing ran ``--help``.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer

from devcluster.cli.typerapp import app
from tests.conftest import run_devcluster


def _commands() -> dict[str, object]:
    """``{name: click command}`` for every command of the app (the group itself is "")."""
    group = typer.main.get_command(app)
    return {"": group, **group.commands}  # type: ignore[attr-defined]


COMMANDS = _commands()


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """``devcluster [NAME] --help`` for every command, two at a time (two cores)."""
    cwd = tmp_path_factory.mktemp("help")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_devcluster, *([name] if name else []), "--help",
                                     cwd=cwd, timeout=60)
                   for name in COMMANDS}
        return {name: f.result() for name, f in futures.items()}


def test_the_walk_finds_every_command() -> None:
    assert {"up", "down", "ps", "logs", "kill", "weight", "client", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS), ids=lambda n: n or "devcluster")
def test_help_works(name: str, helps: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = helps[name]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr == ""
    command = COMMANDS[name]
    summary = (command.help or "").strip().splitlines()[0]  # type: ignore[attr-defined]
    assert summary, f"`devcluster {name}` has no help text"
    assert " ".join(summary.split()[:4]) in " ".join(result.stdout.split())
    takes_arguments = any(p.param_type_name == "argument"  # type: ignore[attr-defined]
                          for p in command.params)  # type: ignore[attr-defined]
    if takes_arguments or name == "":
        assert "Example: devcluster" in result.stdout, f"`devcluster {name} --help` shows no example"


def test_version(tmp_path: Path) -> None:
    from devcluster import __version__

    result = run_devcluster("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"devcluster {__version__}"


def test_completion_can_be_installed(tmp_path: Path) -> None:
    """``--show-completion`` prints the script ``--install-completion`` would install."""
    result = run_devcluster("--show-completion", "bash", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout and "devcluster" in result.stdout
