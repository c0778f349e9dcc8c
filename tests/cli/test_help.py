"""Every command's ``--help`` works, as a new user runs it: a real ``devcluster`` process.

The commands come from the parser's table (:data:`devcluster.cli.spec.COMMANDS`), so a
command added later is covered without editing this file. A help text with brackets once
crashed every ``--help`` under a newer typer; a ``%`` in an argparse help would too.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devcluster.cli import spec
from tests.conftest import run_devcluster

COMMANDS = ["", *spec.COMMANDS]


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """``devcluster [NAME] --help`` for every command, a few at a time (two cores)."""
    cwd = tmp_path_factory.mktemp("help")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_devcluster, *([name] if name else []), "--help",
                                     cwd=cwd, timeout=60)
                   for name in COMMANDS}
        return {name: f.result() for name, f in futures.items()}


def test_the_table_has_every_command() -> None:
    assert {"up", "down", "ps", "logs", "kill", "weight", "client", "demo"} <= set(spec.COMMANDS)


@pytest.mark.parametrize("name", COMMANDS, ids=lambda n: n or "devcluster")
def test_help_works(name: str, helps: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = helps[name]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr == ""
    summary = spec.COMMANDS[name].summary if name else spec.ABOUT
    assert " ".join(summary.split()[:4]) in " ".join(result.stdout.split())
    # Every help ends with an example (README's conventions).
    assert result.stdout.strip().splitlines()[-1].startswith("Example: devcluster")


def test_dash_h_is_help(tmp_path: Path) -> None:
    result = run_devcluster("scale", "-h", cwd=tmp_path)
    assert result.returncode == 0 and "TYPE=N" in result.stdout and "--no-wait" in result.stdout


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


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after ``devcluster WORDS...`` (the last word is being typed)."""
    line = " ".join(f"'{w}'" for w in ("devcluster", *words))
    program = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; "
               "_devcluster_completion; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_completes_commands_and_their_options(tmp_path: Path) -> None:
    script = run_devcluster("--show-completion", "bash", cwd=tmp_path).stdout
    assert _complete(script, "sc") == ["scale"]
    assert sorted(_complete(script, "-f", "Procfile", "re")) == ["registry", "reload", "restart",
                                                                 "resume"]
    assert "--no-wait" in _complete(script, "start", "--n")
    assert "--no-wait" not in _complete(script, "stop", "--n")
    assert _complete(script, "--vers") == ["--version"]


def test_completion_installs_for_bash(tmp_path: Path) -> None:
    from tests.conftest import cli_env

    env = cli_env(HOME=str(tmp_path), SHELL="/bin/bash")
    result = run_devcluster("--install-completion", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / ".bash_completions" / "devcluster.sh"
    assert "_devcluster_completion" in installed.read_text()
    assert f"source {installed}" in (tmp_path / ".bashrc").read_text()
    again = run_devcluster("--install-completion", "bash", cwd=tmp_path, env=env)
    assert again.returncode == 0  # a second install adds no second line
    assert (tmp_path / ".bashrc").read_text().count("source") == 1


def test_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    result = run_devcluster("--show-completion", "tcsh", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("devcluster: error: ") and "tcsh" in result.stderr
