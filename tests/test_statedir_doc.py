"""docs/how-it-works.md's state-dir table is ``devcluster.statedir``'s docstring, row for row."""

from __future__ import annotations

from pathlib import Path

import devcluster.statedir

PAGE = Path(__file__).resolve().parent.parent / "docs" / "how-it-works.md"


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| `") or
            line.startswith("| Path |")]


def test_the_docs_list_every_state_dir_file_as_the_module_does() -> None:
    documented = _rows(devcluster.statedir.__doc__ or "")
    assert documented, "statedir's docstring has no table"
    section = PAGE.read_text().split("## The state dir", 1)[1].split("\n## ", 1)[0]
    assert _rows(section) == documented


def test_every_path_of_the_layout_is_in_the_table() -> None:
    """The Layout spells every path; each is a row (a directory: a row of its own or of
    a file inside it), so a file moved (into ``private/``) cannot keep an old row."""
    root = Path("/s")
    where = devcluster.statedir.layout(root)
    documented = {row.split("`")[1] for row in _rows(devcluster.statedir.__doc__ or "")
                  if row.startswith("| `")}
    paths = {name: getattr(where, name) for name, value in vars(type(where)).items()
             if isinstance(value, property)}
    assert {"lock", "socket", "console_url", "xds_bootstrap", "private"} <= set(paths)
    for name, path in paths.items():
        rel = str(path.relative_to(root))
        assert rel in documented or any(d.startswith(f"{rel}/") for d in documented), name
    private = {where.lock, where.socket, where.console_url, where.xds_bootstrap}
    assert {p.parent for p in private} == {where.private}
