"""The pure parts of reload and --watch: the diff, the globs, the port probe."""

from __future__ import annotations

import socket

import pytest

from devcluster.config.procfile import InstanceSpec
from devcluster.supervisor.reload import changed_tables, diff, port_shareable
from devcluster.supervisor.watch import matches, types_for


def spec(name: str, command: str = "run", port: int = 5000, **env: str) -> InstanceSpec:
    return InstanceSpec(name, name.split(".")[0], command, port, {"PORT": str(port), **env})


def test_the_diff_sorts_instances_by_what_a_reload_does() -> None:
    now = {"keep": spec("keep"), "change": spec("change"), "gone": spec("gone"),
           "env": spec("env", A="1")}
    wanted = {"keep": spec("keep", port=5100),  # moved by a type inserted above: no change
              "change": spec("change", "run v2"), "env": spec("env", A="2"), "new": spec("new")}
    result = diff(now, wanted)
    assert result.added == ("new",) and result.removed == ("gone",)
    assert result.changed == ("change", "env") and result.unchanged == ("keep",)


def test_a_changed_toml_table_changes_its_type() -> None:
    now = {"web.1": spec("web.1"), "web.2": spec("web.2"), "api": spec("api")}
    assert diff(now, dict(now), {"web"}).changed == ("web.1", "web.2")
    assert changed_tables({"web": 1, "api": 2}, {"web": 1, "db": 3}) == {"api", "db"}


@pytest.mark.parametrize(("path", "pattern", "hit"), [
    ("src/app.py", "src/**/*.py", True),
    ("src/a/b/c.py", "src/**/*.py", True),
    ("src/app.js", "src/**/*.py", False),
    ("lib/app.py", "src/**/*.py", False),
    ("web/x.py", "web/*.py", True),
    ("web/sub/x.py", "web/*.py", False),
    ("main.go", "./*.go", True),
])
def test_watch_globs(path: str, pattern: str, hit: bool) -> None:
    assert matches(path, pattern) is hit


def test_types_for_a_change() -> None:
    globs = {"api": ("api/**/*.py",), "web": ("web/*.js",), "worker": ()}
    assert types_for(["api/h.py"], globs) == ["api", "worker"]
    assert types_for(["web/x.js", "api/h.py"], globs) == ["api", "web", "worker"]
    assert types_for(["Procfile", ".env"], globs) == []  # applied as a diff instead


def test_port_shareable_asks_the_kernel() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        assert not port_shareable(plain.getsockname()[1])
    with socket.socket() as shared:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", 0))
        shared.listen()
        assert port_shareable(shared.getsockname()[1])
