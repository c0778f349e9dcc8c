"""The committed reference (``docs/reference/*.md``) is what the code says today.

``python -m devcluster._docs`` writes it from the parsers, the devcluster.toml key table,
the schema, the states, the exit statuses and the state-dir table; a flag, a key or a
docstring changed without running it fails here. After such a change, run
``python -m devcluster._docs``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devcluster import _docs
from devcluster.cli import spec
from devcluster.config import keys
from devcluster.registry.record import State
from devcluster.schema import InstanceInfo

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(_docs.render()))
def test_the_committed_page_is_what_the_code_writes(name: str) -> None:
    committed = REFERENCE / name
    assert committed.is_file(), f"{committed} is missing: run `python -m devcluster._docs`"
    assert committed.read_text() == _docs.render()[name], \
        f"{committed} is stale: run `python -m devcluster._docs`"


def test_no_page_is_left_over() -> None:
    """A page the generator no longer writes would be served stale by the site."""
    assert {p.name for p in REFERENCE.glob("*.md")} == set(_docs.render())


def test_every_command_flag_key_field_and_state_is_in_it() -> None:
    pages = _docs.render()
    for command in spec.COMMANDS.values():
        assert f"## `devcluster {command.name}`" in pages["commands.md"]
        for action in spec.build(command)._actions:
            for option in action.option_strings:
                assert f"`{option}`" in pages["commands.md"], (command.name, option)
    for key in keys.KEYS:
        assert f"| `{key.name}` |" in pages["config.md"], key
    for field in InstanceInfo.__dataclass_fields__:
        assert f"| `{field}` |" in pages["instances.md"], field
    for state in State:
        assert f"| `{state.value}` |" in pages["instances.md"], state
    for status in ("0", "1", "2", "130"):
        assert f"| `{status}` |" in pages["exit-status.md"]


def test_check_names_a_stale_page_and_the_fix(tmp_path: Path) -> None:
    """``--check`` is not vacuous: an edited page is found, and the fix is named."""
    _docs.main(["--out", str(tmp_path)])
    assert _docs.main(["--out", str(tmp_path), "--check"]) == 0
    page = tmp_path / "config.md"
    page.write_text(page.read_text().replace("| `scale` |", "| `scael` |"))
    done = subprocess.run([sys.executable, "-m", "devcluster._docs", "--out", str(tmp_path),
                           "--check"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert "config.md is stale: run `python -m devcluster._docs`" in done.stderr


def test_the_command_line_does_not_import_the_generator() -> None:
    code = ("import sys; from devcluster.cli import entry, runner, spec; "
            "print('devcluster._docs' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"
