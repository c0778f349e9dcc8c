"""README's state-dir table is the one in ``devcluster.statedir``'s docstring, row for row."""

from __future__ import annotations

from pathlib import Path

import devcluster.statedir

README = Path(__file__).resolve().parent.parent / "README.md"


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| `") or
            line.startswith("| Path |")]


def test_readme_lists_every_state_dir_file_as_the_module_does() -> None:
    documented = _rows(devcluster.statedir.__doc__ or "")
    assert documented, "statedir's docstring has no table"
    section = README.read_text().split("### The state dir", 1)[1].split("\n## ", 1)[0]
    assert _rows(section) == documented
