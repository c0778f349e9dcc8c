"""devcluster.config.procfile: parsing, validation, .env, scale, expansion, ports, argv. Pure.

The few tests that run a process (``command_argv`` against ``/bin/sh``) compare the
argv we exec with what the shell itself would run: that is the contract.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devcluster.config import procfile
from devcluster.config.procfile import (
    DEFAULT_BASE_PORT,
    ProcessType,
    command_argv,
    expand,
    load,
    parse_env,
    parse_procfile,
    parse_scale,
    read_text,
    service_of,
)
from devcluster.errors import ProcfileError, UsageError

GREETER = "python -m devcluster.greeter --port $PORT"


# -- parse / validate ------------------------------------------------------------------

def test_parse_keeps_order_commands_and_line_numbers() -> None:
    text = "# demo\n\nweb: python web.py --port $PORT\n  # indented comment\nworker:  run it  \n"
    assert parse_procfile(text, "Procfile") == (
        ProcessType("web", "python web.py --port $PORT", 3),
        ProcessType("worker", "run it", 5),
    )


def test_parse_accepts_crlf_and_no_space_after_colon() -> None:
    types = parse_procfile("web:python a.py\r\napi: python b.py\r\n", "Procfile")
    assert [(t.name, t.command) for t in types] == [("web", "python a.py"),
                                                    ("api", "python b.py")]


def test_names_may_use_letters_digits_dash_underscore() -> None:
    types = parse_procfile("Web_1-a: x\n9: y\n", "Procfile")
    assert [t.name for t in types] == ["Web_1-a", "9"]


@pytest.mark.parametrize("bad", ["just words here", "web:", "web:   ", ": cmd", "web cmd: x"])
def test_malformed_line_names_file_and_line(bad: str) -> None:
    text = f"web: {GREETER}\n# comment\n{bad}\n"
    with pytest.raises(ProcfileError) as e:
        parse_procfile(text, "Procfile")
    message = str(e.value)
    assert "Procfile:3" in message
    assert "\n" not in message


def test_duplicate_name_reports_both_lines() -> None:
    text = f"web: {GREETER}\n\napi: x\nweb: other\n"
    with pytest.raises(ProcfileError) as e:
        parse_procfile(text, "Procfile")
    message = str(e.value)
    assert "Procfile:4" in message
    assert "line 1" in message
    assert "'web'" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n   # comments\n\n"])
def test_empty_or_comments_only_is_an_error(text: str) -> None:
    with pytest.raises(ProcfileError, match="defines no processes"):
        parse_procfile(text, "Procfile")


@pytest.mark.parametrize("name", ["my.web", "web$", "wéb", "a b/c", "web@1"])
def test_illegal_name_characters(name: str) -> None:
    with pytest.raises(ProcfileError) as e:
        parse_procfile(f"ok: x\n{name}: cmd\n", "Procfile")
    assert "Procfile:2" in str(e.value)


def test_dotted_name_is_called_illegal_not_malformed() -> None:
    with pytest.raises(ProcfileError, match="illegal characters"):
        parse_procfile("my.web: cmd\n", "Procfile")


def test_indented_line_is_accepted() -> None:
    # Regression: honcho's pattern is anchored at column 0 (was a KeyError traceback).
    types = parse_procfile("  web: python a.py\n\tapi: python b.py  \n", "Procfile")
    assert [(t.name, t.command, t.line) for t in types] == [("web", "python a.py", 1),
                                                            ("api", "python b.py", 2)]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProcfileError) as e:
        read_text(tmp_path / "Procfile", "Procfile")
    assert "no Procfile at" in str(e.value)
    assert str(tmp_path / "Procfile") in str(e.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ProcfileError, match="is a directory"):
        read_text(tmp_path, "Procfile")


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "Procfile"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00web: x\n")
    with pytest.raises(ProcfileError, match="not a text file"):
        read_text(path, "Procfile")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "Procfile"
    path.write_bytes("web: echo caf\xe9\n".encode("latin-1"))
    with pytest.raises(ProcfileError, match=r"not UTF-8 text \(bad byte at offset 13\)"):
        read_text(path, "Procfile")


def test_unreadable_file(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "Procfile"
    path.write_text("web: x\n")
    path.chmod(0)
    try:
        with pytest.raises(ProcfileError, match="permission denied"):
            read_text(path, "Procfile")
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_load_reads_dotenv_beside_the_procfile_and_env_files(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(f"web: {GREETER}\n")
    (tmp_path / ".env").write_text("A=1\nB=from-dotenv\n")
    extra = tmp_path / "extra.env"
    extra.write_text("B=from-extra\nC=3\n")
    types, env, specs = load(tmp_path / "Procfile", [extra])
    assert [t.name for t in types] == ["web"]
    assert env == {"A": "1", "B": "from-extra", "C": "3"}
    assert specs[0].env["B"] == "from-extra"
    assert specs[0].env["PORT"] == str(DEFAULT_BASE_PORT)


def test_a_byte_order_mark_is_read_past_in_every_file(tmp_path: Path) -> None:
    """Issue 26 item 16: a UTF-8 BOM (Notepad writes one) made line 1 "illegal
    characters" ('\\ufeffweb'); it means nothing in UTF-8, so it is skipped. The files
    are not rewritten."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "Procfile").write_bytes(bom + f"web: {GREETER}\n".encode())
    (tmp_path / ".env").write_bytes(bom + b"A=1\n")
    types, env, _ = load(tmp_path / "Procfile")
    assert [t.name for t in types] == ["web"] and env == {"A": "1"}
    assert (tmp_path / "Procfile").read_bytes().startswith(bom)
    assert (tmp_path / ".env").read_bytes() == bom + b"A=1\n"


def test_load_missing_env_file(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(f"web: {GREETER}\n")
    with pytest.raises(ProcfileError, match="does not exist"):
        load(tmp_path / "Procfile", [tmp_path / "nope.env"])


# -- .env ------------------------------------------------------------------------------

def test_env_basic_export_quotes_comments() -> None:
    text = ("# settings\n"
            "PLAIN=1\n"
            "export EXPORTED=yes\n"
            "SINGLE='a b  c'\n"
            'DOUBLE="x y"\n'
            "\n"
            "   # indented comment\n"
            "EQUALS=a=b\n")
    assert parse_env(text, ".env") == {"PLAIN": "1", "EXPORTED": "yes", "SINGLE": "a b  c",
                                       "DOUBLE": "x y", "EQUALS": "a=b"}


@pytest.mark.parametrize(("line", "expected"), [
    ("KEY = v", {"KEY": "v"}),
    ("A=x # the comment", {"A": "x"}),
    ("Q='a b'  # the comment", {"Q": "a b"}),
])
def test_env_spaces_around_equals_and_trailing_comments(line: str,
                                                        expected: dict[str, str]) -> None:
    assert parse_env(line + "\n", ".env") == expected


@pytest.mark.parametrize(("text", "line"), [
    ("A=1\nnot an assignment\n", 2),
    ("A=1\n\n# c\n1BAD=x\n", 4),
    ("A=1\nB='unclosed\n", 2),
    ("=value\n", 1),
])
def test_env_bad_line_is_reported_with_its_number(text: str, line: int) -> None:
    with pytest.raises(ProcfileError) as e:
        parse_env(text, "/x/.env")
    assert f"/x/.env:{line}" in str(e.value)


def test_env_unquoted_value_with_spaces_is_refused_with_its_line() -> None:
    # Regression: honcho joined the words, silently turning it into "helloworld".
    with pytest.raises(ProcfileError) as e:
        parse_env("A=1\nGREETING=hello world\n", "/x/.env")
    assert "/x/.env:2" in str(e.value)
    assert "GREETING" in str(e.value)


def test_env_empty_value_is_kept() -> None:
    # Regression: honcho dropped `KEY=` (fewer than 3 tokens).
    assert parse_env("EMPTY=\nQUOTED=''\n", ".env") == {"EMPTY": "", "QUOTED": ""}


# -- scale -----------------------------------------------------------------------------

def test_parse_scale() -> None:
    assert parse_scale(["greeter=3", "web=0", "greeter=2"]) == {"greeter": 2, "web": 0}
    assert parse_scale([]) == {}


@pytest.mark.parametrize(("item", "fragment"), [
    ("greeter", "expected TYPE=N"),
    ("=3", "expected TYPE=N"),
    ("greeter=-1", "0 or more"),
    ("greeter=abc", "not a whole number"),
    ("greeter=1.5", "not a whole number"),
    ("greeter=", "not a whole number"),
])
def test_parse_scale_errors(item: str, fragment: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_scale([item])
    assert fragment in str(e.value)
    assert repr(item) in str(e.value)


def test_scale_unknown_type_lists_the_types() -> None:
    types = parse_procfile("web: a\nworker: b\n", "Procfile")
    with pytest.raises(UsageError) as e:
        expand(types, {"nope": 2})
    assert "'nope'" in str(e.value)
    assert "web, worker" in str(e.value)


# -- expansion: names ------------------------------------------------------------------

TYPES = parse_procfile("web: a $PORT\nworker: b\nclock: c\n", "Procfile")


def test_unscaled_types_keep_their_names() -> None:
    assert [s.name for s in expand(TYPES)] == ["web", "worker", "clock"]


def test_scaled_types_get_dotted_names_even_at_one() -> None:
    specs = expand(TYPES, {"worker": 1, "web": 3})
    assert [s.name for s in specs] == ["web.1", "web.2", "web.3", "worker.1", "clock"]
    assert {s.process_type for s in specs} == {"web", "worker", "clock"}


def test_scale_zero_gives_no_instance() -> None:
    assert [s.name for s in expand(TYPES, {"worker": 0})] == ["web", "clock"]


# -- expansion: ports and env ----------------------------------------------------------

def test_ports_follow_foremans_scheme() -> None:
    specs = {s.name: s.port for s in expand(TYPES, {"web": 2, "worker": 3})}
    assert specs == {"web.1": 5000, "web.2": 5001, "worker.1": 5100, "worker.2": 5101,
                     "worker.3": 5102, "clock": 5200}


def test_a_type_scaled_to_zero_still_takes_its_hundred() -> None:
    specs = {s.name: s.port for s in expand(TYPES, {"worker": 0})}
    assert specs == {"web": 5000, "clock": 5200}


def test_port_base() -> None:
    specs = {s.name: s.port for s in expand(TYPES, {"worker": 2}, base_port=7000)}
    assert specs == {"web": 7000, "worker.1": 7100, "worker.2": 7101, "clock": 7200}


def test_port_zero_gives_every_instance_port_zero() -> None:
    specs = expand(TYPES, {"web": 3}, base_port=0)
    assert {s.port for s in specs} == {0}
    assert {s.env["PORT"] for s in specs} == {"0"}


def test_instance_env_vars() -> None:
    specs = expand(TYPES, {"web": 2}, env={"FROM_ENV": "x", "PS": "overridden"})
    web2 = next(s for s in specs if s.name == "web.2")
    assert dict(web2.env) == {"FROM_ENV": "x", "PORT": "5001", "PS": "web.2",
                              "DEVCLUSTER_INSTANCE": "web.2", "PYTHONUNBUFFERED": "1"}
    assert web2.service == "web"
    assert web2.command == "a $PORT"


def test_specs_are_immutable() -> None:
    spec = expand(TYPES)[0]
    with pytest.raises(TypeError):
        spec.env["PORT"] = "1"  # type: ignore[index]


def test_load_takes_the_base_port_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: a\napi: b\n")
    (tmp_path / ".env").write_text("PORT=8000\n")
    _, _, specs = load(tmp_path / "Procfile")
    assert [(s.name, s.port) for s in specs] == [("web", 8000), ("api", 8100)]


def test_load_rejects_a_non_numeric_port_in_dotenv(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: a\n")
    (tmp_path / ".env").write_text("PORT=eighty\n")
    with pytest.raises(UsageError, match="PORT='eighty'"):
        load(tmp_path / "Procfile")


@pytest.mark.parametrize(("process_type", "service"), [
    ("server1", "server"), ("server12", "server"), ("greeter", "greeter"),
    ("123", "123"), ("a1b2", "a1b"), ("web_2", "web_"),
])
def test_service_of(process_type: str, service: str) -> None:
    assert service_of(process_type) == service


def test_spec_service_strips_the_type_not_the_instance_number() -> None:
    specs = expand(parse_procfile("server1: a\nserver2: b\n", "P"), {"server2": 2})
    assert [(s.name, s.service) for s in specs] == [
        ("server1", "server"), ("server2.1", "server"), ("server2.2", "server")]


# -- hypothesis: expansion -------------------------------------------------------------

_names = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(_names, min_size=1, max_size=6, unique=True),
    data=st.data(),
    base=st.one_of(st.just(0), st.integers(min_value=1024, max_value=50000)),
)
def test_expansion_properties(names: list[str], data: st.DataObject, base: int) -> None:
    types = parse_procfile("".join(f"{n}: run {n} $PORT\n" for n in names), "Procfile")
    scaled = data.draw(st.lists(st.sampled_from(names), unique=True), label="scaled")
    scale = {n: data.draw(st.integers(0, 8), label=f"scale {n}") for n in scaled}
    specs = expand(types, scale, base_port=base)

    # Names are unique, and there is one instance per unit of scale (1 when unscaled).
    assert len({s.name for s in specs}) == len(specs)
    assert len(specs) == sum(scale.get(n, 1) for n in names)
    for index, name in enumerate(names):
        mine = [s for s in specs if s.process_type == name]
        if name in scale:
            assert [s.name for s in mine] == [f"{name}.{i}" for i in range(1, scale[name] + 1)]
        else:
            assert [s.name for s in mine] == [name]
        for number, spec in enumerate(mine, start=1):
            expected = base + 100 * index + number - 1 if base else 0
            assert spec.port == expected
            assert spec.env["PORT"] == str(expected)
            assert spec.env["PS"] == spec.env["DEVCLUSTER_INSTANCE"] == spec.name
            assert spec.env["PYTHONUNBUFFERED"] == "1"
            assert spec.service == service_of(name)
    if base:
        assert len({s.port for s in specs}) == len(specs)


# -- command_argv ----------------------------------------------------------------------

ENV = {"PORT": "5100", "HOME": "/home/u", "SPACED": "--grace 1", "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize(("command", "argv"), [
    ("python -m devcluster.greeter --port $PORT",
     ["python", "-m", "devcluster.greeter", "--port", "5100"]),
    ("python -m x --port=$PORT --home $HOME", ["python", "-m", "x", "--port=5100",
                                                "--home", "/home/u"]),
    ("  server   --flag  ", ["server", "--flag"]),
])
def test_plain_commands_are_execd_directly(command: str, argv: list[str]) -> None:
    assert command_argv(command, ENV) == argv


def test_braced_port_is_expanded_without_a_shell() -> None:
    assert command_argv("python -m x --port ${PORT}", ENV) == ["python", "-m", "x", "--port",
                                                               "5100"]


@pytest.mark.parametrize("command", [
    "python a.py | tee out",
    "python a.py && python b.py",
    "python a.py; python b.py",
    "python a.py > out.log 2>&1",
    "FOO=1 python a.py",
    "python -c 'print(1)'",
    'python -c "print(1)"',
    "python a.py *.txt",
    "echo $(date)",
    "echo `date`",
    "cd ~ && python a.py",
    "python a.py --port ${PORT:-5000}",
])
def test_shell_syntax_goes_to_sh(command: str) -> None:
    assert command_argv(command, ENV) == ["/bin/sh", "-c", command]


@pytest.fixture
def print_args(tmp_path: Path) -> Path:
    """An executable that prints each of its arguments in brackets, one per line."""
    script = tmp_path / "print-args"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\n')
    script.chmod(0o755)
    return script


def _run(argv: list[str], cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=10,
                          check=True).stdout


@pytest.mark.parametrize("args", [
    "--port $PORT",
    "--port=$PORT --home=$HOME",
    "--port ${PORT}",
    "a  b   c",
    "--name 'two words'",
    # Regressions: each of these once differed from sh.
    "--port $PORT # the main server",
    "--port $PORT $UNSET",
    "$SPACED",
    "--port ${PORT} ${UNSET} x",
    "a#b {a} x{y}",
])
def test_argv_runs_what_the_shell_would(args: str, print_args: Path, tmp_path: Path) -> None:
    command = f"./{print_args.name} {args}"
    assert _run(command_argv(command, ENV), tmp_path) == _run(["/bin/sh", "-c", command],
                                                               tmp_path)


def test_module_docstring_example() -> None:
    types = procfile.parse_procfile("web: python -m devcluster.greeter --port $PORT", "Procfile")
    assert [i.name for i in procfile.expand(types, {"web": 2})] == ["web.1", "web.2"]
