"""devcluster.toml: parsing real files, every mistake as one line naming file, line and key,
the dependency graph, and flags over the file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from devcluster.config.policy import Policy
from devcluster.config.procfile import DEFAULT_BASE_PORT
from devcluster.config.project import (
    DEFAULT_GRACE,
    DEFAULT_READY_TIMEOUT,
    PROJECT_FILE,
    Flags,
    ProjectError,
    Ready,
    check_types,
    find_project,
    load_project,
    parse_project,
    resolve,
    start_order,
)
from devcluster.config.tomllines import key_lines
from devcluster.errors import UsageError

FULL = """\
# the issue's example
[cluster]
port = 5000            # base port, as -p
grace = 5              # seconds, as --grace

[process.echo]
scale = 2
restart = "on-failure"
ready = { grpc = "echo.Echo" }
ready_timeout = 30
weight = 3
env = { LOG_LEVEL = "debug" }
metadata = { zone = "a" }
watch = ["src/**/*.py"]
preload = ["json", "echo.server"]

[process.web]
depends_on = ["echo"]
ready = { http = "/" }
grace = 1.5
"""


def write(tmp_path: Path, text: str, name: str = PROJECT_FILE) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_issues_example_parses_into_frozen_settings(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, FULL))
    assert project.cluster.port == 5000 and project.cluster.grace == 5.0
    assert project.cluster.registry is None
    echo, web = project.processes["echo"], project.processes["web"]
    assert echo.scale == 2 and echo.restart is Policy.ON_FAILURE and echo.weight == 3
    assert echo.ready == Ready("grpc", "echo.Echo") and echo.ready_timeout == 30.0
    assert dict(echo.env) == {"LOG_LEVEL": "debug"} and dict(echo.metadata) == {"zone": "a"}
    assert echo.watch == ("src/**/*.py",) and echo.preload == ("json", "echo.server")
    assert web.depends_on == ("echo",) and web.ready == Ready("http", "/")
    assert web.scale is None and web.restart is None and web.grace == 1.5
    assert echo.line == 6 and web.line == 17
    with pytest.raises(AttributeError):
        echo.scale = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        echo.env["X"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(("ready", "expected"), [
    ('{ grpc = "" }', Ready("grpc", "")),
    ('{ http = "/healthz" }', Ready("http", "/healthz")),
    ("{ tcp = true }", Ready("tcp", "")),
    ('{ exec = "pg_isready -p $PORT" }', Ready("exec", "pg_isready -p $PORT")),
    ("{ log = 'listening on \\d+' }", Ready("log", r"listening on \d+")),
])
def test_every_probe_kind(tmp_path: Path, ready: str, expected: Ready) -> None:
    project = load_project(write(tmp_path, f"[process.a]\nready = {ready}\n"))
    assert project.processes["a"].ready == expected


def test_other_toml_spellings_of_the_same_settings(tmp_path: Path) -> None:
    text = ('process.a.scale = 2\n[process.b]\nmetadata.zone = "b"\n'
            '[process.b.env]\nX = "1"\n[process."c-1"]\nweight = 0\n'
            '[cluster]\nregistry = "etcd://127.0.0.1:2379/dc"\n')
    project = load_project(write(tmp_path, text))
    assert project.processes["a"].scale == 2
    assert dict(project.processes["b"].metadata) == {"zone": "b"}
    assert dict(project.processes["b"].env) == {"X": "1"}
    assert project.processes["c-1"].weight == 0 and project.processes["c-1"].line == 6
    assert project.cluster.registry == "etcd://127.0.0.1:2379/dc"
    assert load_project(write(tmp_path, '[cluster]\nregistry = "file"\n')).cluster.registry is None


def test_key_lines_see_headers_dotted_and_inline_keys_but_not_strings() -> None:
    text = ('[process.a]\nready = { log = "x=1", b = 2 }\nnote = """\nfake = 1\n"""\n'
            "env.X = 'y'\n")
    lines = key_lines(text)
    assert lines[("process", "a")] == 1
    assert lines[("process", "a", "ready", "log")] == 2
    assert lines[("process", "a", "ready", "b")] == 2
    assert ("process", "a", "fake") not in lines
    assert lines[("process", "a", "env", "X")] == 6


# Each row: the file's text, then fragments of the one-line message (the first is
# always "devcluster.toml:LINE: ").
BAD: dict[str, tuple[str, tuple[str, ...]]] = {
    "not toml": ('[process.a]\nscale = two\n', (":2:", "not valid TOML", "fix the syntax")),
    "unclosed table": ("[process.a\n", (":1:", "not valid TOML")),
    "duplicate key": ('[process.a]\nscale = 1\nscale = 2\n', (":3:", "not valid TOML")),
    "unknown top key": ('[processes.a]\nscale = 1\n', (":1:", "processes", "'process'")),
    "unknown key, did you mean": ('\n[process.a]\nscael = 2\n',
                                  (":3:", "process.a.scael", "did you mean 'scale'?")),
    "unknown key, list": ('[process.a]\nzzz = 2\n', (":2:", "known keys: depends_on")),
    "unknown cluster key": ('[cluster]\nports = 1\n', (":2:", "cluster.ports", "'port'")),
    "cluster not a table": ('cluster = 1\n', (":1:", "cluster must be a table")),
    "process not a table": ('[process]\na = 1\n', (":2:", "process.a must be a table")),
    "bad type name": ('[process."my.web"]\nscale = 1\n', (":1:", "not a process type name")),
    "port a string": ('[cluster]\nport = "5000"\n', (":2:", "cluster.port", "whole number")),
    "port too big": ('[cluster]\nport = 70000\n', (":2:", "out of range", "0 to 65535")),
    "grace negative": ('[cluster]\ngrace = -1\n', (":2:", "cluster.grace", ">= 0")),
    "grace a string": ('[cluster]\ngrace = "5s"\n', (":2:", "number of seconds")),
    "registry unknown": ('[cluster]\nregistry = "redis://x"\n', (":2:", "etcd://host")),
    "registry a number": ('[cluster]\nregistry = 1\n', (":2:", "must be a string")),
    "scale a bool": ('[process.a]\nscale = true\n', (":2:", "process.a.scale", "whole number")),
    "scale negative": ('[process.a]\nscale = -1\n', (":2:", "out of range")),
    "scale a float": ('[process.a]\nscale = 1.5\n', (":2:", "not a decimal number", "whole number")),
    "restart unknown": ('[process.a]\nrestart = "sometimes"\n',
                        (":2:", "not a restart policy", "'on-failure'")),
    "ready a string": ('[process.a]\nready = "grpc"\n', (":2:", "table of one probe")),
    "ready two probes": ('[process.a]\nready = { tcp = true, http = "/" }\n',
                         (":2:", "table of one probe")),
    "ready unknown probe": ('[process.a]\nready = { htp = "/" }\n',
                            (":2:", "process.a.ready.htp", "did you mean 'http'?")),
    "ready tcp false": ('[process.a]\nready = { tcp = false }\n', (":2:", "must be true")),
    "ready grpc a number": ('[process.a]\nready = { grpc = 1 }\n', (":2:", "must be a string")),
    "ready http no slash": ('[process.a]\nready = { http = "healthz" }\n',
                            (":2:", "starting with '/'")),
    "ready exec empty": ('[process.a]\nready = { exec = " " }\n', (":2:", "must be a command")),
    "ready log bad regex": ('[process.a]\n\nready = { log = "(unclosed" }\n',
                            (":3:", "not a valid regex")),
    "ready log empty": ('[process.a]\nready = { log = "" }\n', (":2:", "must be a regex")),
    "ready_timeout zero": ('[process.a]\nready_timeout = 0\n', (":2:", "> 0")),
    "weight negative": ('[process.a]\nweight = -2\n', (":2:", "process.a.weight", "out of range")),
    "env a string": ('[process.a]\nenv = "X=1"\n', (":2:", "table of strings")),
    "env value a number": ('[process.a]\nenv = { X = 1 }\n', (":2:", "process.a.env.X", 'X = "1"')),
    "env value a bool, subtable": ('[process.a.env]\nDEBUG = true\n',
                                   (":2:", 'DEBUG = "true"')),
    "env bad name": ('[process.a]\nenv = { "1X" = "a" }\n', (":2:", "not a valid key")),
    "env sets PORT": ('[process.a]\nenv = { PORT = "80" }\n', (":2:", "set by devcluster")),
    "metadata not strings": ('[process.a]\nmetadata = { zone = 1 }\n', (":2:", 'zone = "1"')),
    "metadata key with =": ('[process.a]\nmetadata = { "a=b" = "c" }\n', (":2:", "no '='")),
    "depends_on a string": ('[process.a]\ndepends_on = "b"\n', (":2:", "array of strings")),
    "depends_on bad name": ('[process.a]\ndepends_on = ["b c"]\n', (":2:", "'b c', not a process type name")),
    "depends_on repeated": ('[process.a]\ndepends_on = ["b", "b"]\n', (":2:", "twice")),
    "depends_on self": ('[process.a]\ndepends_on = ["a"]\n', (":2:", "cycle: a -> a")),
    "depends_on cycle": ('[process.a]\ndepends_on = ["b"]\n[process.b]\ndepends_on = ["c"]\n'
                         '[process.c]\ndepends_on = ["a"]\n',
                         (":2:", "cycle: a -> b -> c -> a", "remove one")),
    "watch not strings": ('[process.a]\nwatch = [1]\n', (":2:", "array of strings")),
    # Issue 26 item 11: durations that overflow the clocks they reach (a traceback, and a
    # cluster left running), and strings no environment or argv can carry.
    **{f"{key} = {value}": (f'[process.a]\n{key} = {value}\n',
                            (":2:", f"process.a.{key}", "out of range", "at most 86400"))
       for key in ("ready_timeout", "grace") for value in ("inf", "1e20", "nan", "-inf")},
    "cluster grace inf": ('[cluster]\ngrace = inf\n', (":2:", "cluster.grace", "at most 86400")),
    "grace a 30-digit integer": ('[cluster]\ngrace = ' + "9" * 30 + '\n',
                                 (":2:", "a huge number", "out of range")),
    "grace a 5,000-digit integer": ('[cluster]\ngrace = ' + "9" * 5000 + '\n',
                                    (":2:", "not valid TOML", "that long")),
    "env value with a null byte": ('[process.a]\nenv = { A = "x\\u0000y" }\n',
                                   (":2:", "process.a.env.A", "null byte")),
    "env key with a null byte": ('[process.a]\nenv = { "A\\u0000" = "x" }\n',
                                 (":2:", "process.a.env has a key", "null byte")),
    "exec probe with a null byte": ('[process.a]\nready = { exec = "true\\u0000" }\n',
                                    (":2:", "process.a.ready.exec", "null byte")),
    "watch glob with a null byte": ('[process.a]\nwatch = ["src/\\u0000"]\n',
                                    (":2:", "process.a.watch", "null byte")),
    "preload not a module": ('[process.a]\npreload = ["my-mod"]\n',
                             (":2:", "'my-mod', not a Python module name")),
    "log_max not a size": ('[cluster]\nlog_max = "10 megs"\n',
                           (":2:", "cluster.log_max", "not a size", '"10MiB"')),
    "log_max a float": ('[process.a]\nlog_max = 1.5\n',
                        (":2:", "process.a.log_max", "must be a size", "number of bytes")),
    "log_max too small": ('[process.a]\nlog_max = "1KiB"\n',
                          (":2:", "out of range", "4 KiB to 1 TiB")),
    "log_max negative": ('[cluster]\nlog_max = -1\n', (":2:", "out of range")),
    "log_keep negative": ('[process.a]\nlog_keep = -1\n',
                          (":2:", "process.a.log_keep", "out of range", "0 to 100")),
    "log_keep a string": ('[cluster]\nlog_keep = "3"\n', (":2:", "whole number")),
}


@pytest.mark.parametrize(("text", "fragments"), BAD.values(), ids=BAD.keys())
def test_bad_file_is_one_line_naming_file_line_and_key(
        tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProjectError) as caught:
        load_project(path)
    message = str(caught.value)
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith(f"{path}{fragments[0]} "), message
    for fragment in fragments[1:]:
        assert fragment in message, message


def test_a_byte_order_mark_is_read_past_and_the_file_left_alone(tmp_path: Path) -> None:
    """Issue 26 item 16: Notepad's BOM gave "Invalid statement"; it means nothing in UTF-8,
    so the file reads as without it (line numbers unchanged), and it is not rewritten."""
    path = tmp_path / "devcluster.toml"
    path.write_bytes(b"\xef\xbb\xbf[process.a]\nscale = 2\nscael = 3\n")
    with pytest.raises(ProjectError, match=r"devcluster.toml:3: process.a.scael"):
        load_project(path)
    path.write_bytes(b"\xef\xbb\xbf[process.a]\nscale = 2\n")
    assert load_project(path).processes["a"].scale == 2
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")


def test_log_caps_per_type_over_the_cluster_over_the_defaults(tmp_path: Path) -> None:
    text = ('[cluster]\nlog_max = "2MiB"\nlog_keep = 1\n'
            '[process.a]\nlog_max = 65536\n[process.b]\nlog_keep = 0\nlog_max = "1.5 MB"\n')
    resolved = resolve(load_project(write(tmp_path, text)), Flags(), ["a", "b", "c"], environ={})
    assert (resolved.log_max, resolved.log_keep) == (2 << 20, 1)
    caps = {n: (t.log_max, t.log_keep) for n, t in resolved.types.items()}
    assert caps == {"a": (65536, 1), "b": (1_500_000, 0), "c": (2 << 20, 1)}
    plain = resolve(None, Flags(), ["a"], environ={})
    assert (plain.types["a"].log_max, plain.types["a"].log_keep) == (10 << 20, 3)


def test_file_problems_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_project(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_project(tmp_path / "bin.toml")


def test_find_project_beside_the_procfile_or_by_config(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("a: run\n")
    assert find_project(procfile) is None
    write(tmp_path, "[process.a]\nscale = 2\n")
    assert find_project(procfile).processes["a"].scale == 2  # type: ignore[union-attr]
    other = write(tmp_path, "[process.a]\nscale = 3\n", "other.toml")
    assert find_project(procfile, other).processes["a"].scale == 3  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="does not exist"):
        find_project(procfile, tmp_path / "missing.toml")


def test_procfile_types_check_tables_and_dependencies(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, '[process.wbe]\nscale = 1\n'))
    with pytest.raises(ProjectError, match=r"toml:1: \[process.wbe\] names no Procfile type; "
                                           r"did you mean 'web'\? types: web, api"):
        check_types(project, ["web", "api"])
    project = load_project(write(tmp_path, '[process.web]\n\ndepends_on = ["apl"]\n'))
    with pytest.raises(ProjectError, match=r"toml:3: process.web.depends_on names 'apl'.*"
                                           r"did you mean 'api'"):
        check_types(project, ["web", "api"])
    check_types(load_project(write(tmp_path, '[process.web]\ndepends_on = ["api"]\n')),
                ["web", "api"])


def test_start_order_in_waves() -> None:
    project = parse_project('[process.web]\ndepends_on = ["api", "db"]\n'
                            '[process.api]\ndepends_on = ["db"]\n', "t")
    assert start_order(project, ["web", "api", "db", "other"]) == [
        ["db", "other"], ["api"], ["web"]]
    assert start_order(None, ["b", "a"]) == [["b", "a"]]


def test_no_file_resolves_to_todays_defaults() -> None:
    resolved = resolve(None, Flags(), ["a", "b"], environ={})
    assert (resolved.port, resolved.grace, resolved.ready_timeout, resolved.registry) == (
        DEFAULT_BASE_PORT, DEFAULT_GRACE, DEFAULT_READY_TIMEOUT, None)
    assert dict(resolved.scale) == {} and dict(resolved.restart) == {}
    assert resolved.types["a"].restart is Policy.ON_FAILURE and resolved.types["a"].ready is None
    assert resolved.types["a"].weight == 1 and resolved.waves == (("a", "b"),)
    flags = Flags(port=0, grace=1.0, scale={"a": 3}, restart={"b": Policy.NO})
    resolved = resolve(None, flags, ["a", "b"], environ={"DEVCLUSTER_REGISTRY": "etcd://e"})
    assert (resolved.port, resolved.grace, dict(resolved.scale)) == (0, 1.0, {"a": 3})
    assert resolved.types["b"].restart is Policy.NO and resolved.registry == "etcd://e"


def test_flags_override_the_file_and_absent_flags_keep_it(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, FULL + '[process.extra]\nrestart = "always"\n'))
    types = ["echo", "web", "extra", "plain"]
    kept = resolve(project, Flags(), types, environ={})
    assert (kept.port, kept.grace, dict(kept.scale)) == (5000, 5.0, {"echo": 2})
    assert dict(kept.restart) == {"echo": Policy.ON_FAILURE, "extra": Policy.ALWAYS}
    assert kept.types["web"].grace == 1.5 and kept.types["echo"].grace == 5.0
    assert kept.types["echo"].weight == 3 and kept.types["plain"].weight == 1
    assert kept.waves == (("echo", "extra", "plain"), ("web",))
    flags = Flags(port=0, grace=2.0, ready_timeout=9.0, registry="etcd://f",
                  scale={"web": 4}, restart={"extra": Policy.NO})
    over = resolve(project, flags, types, environ={"DEVCLUSTER_REGISTRY": "etcd://env"})
    assert (over.port, over.grace, over.registry) == (0, 2.0, "etcd://f")
    assert dict(over.scale) == {"echo": 2, "web": 4}
    assert over.types["extra"].restart is Policy.NO and over.types["web"].grace == 2.0
    assert {t.ready_timeout for t in over.types.values()} == {9.0}


def test_resolve_refuses_tables_the_procfile_lacks(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, FULL))
    with pytest.raises(ProjectError, match="names no Procfile type"):
        resolve(project, Flags(), ["echo"], environ={})


@pytest.mark.parametrize(("flags", "fragment"), [
    (Flags(grace=math.inf), "grace=inf is out of range"),
    (Flags(grace=math.nan), "grace=nan"),
    (Flags(grace=-1.0), "grace=-1.0"),
    (Flags(ready_timeout=1e20), "ready_timeout=1e+20 is out of range"),
    (Flags(ready_timeout=0.0), "more than 0 to 86400"),
])
def test_resolve_refuses_durations_the_api_was_given(flags: Flags, fragment: str) -> None:
    """Issue 26 item 11 through the Python API (`Cluster(grace=math.inf)`): refused in one
    line before anything starts, as in devcluster.toml and on the command line."""
    with pytest.raises(UsageError, match=re.escape(fragment)):
        resolve(None, flags, ["web"])
    assert resolve(None, Flags(grace=0.0, ready_timeout=86400.0), ["web"]).grace == 0.0
