"""Every user mistake: one line on stderr naming the problem, exit 2 (usage) or 1
(runtime), no traceback, and the user's files unchanged.

Each row is: the files to write, the CLI args, the expected exit status, a fragment
of the message. Rows marked ``cluster`` run against one shared running cluster.
The rows run concurrently in a module fixture; each test checks its own outcome.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devcluster.api import Cluster
from devcluster.statedir import layout

GREETER = "python -m devcluster.greeter --port $PORT"
PROCFILE = f"greeter: {GREETER}\n".encode()


@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]
    code: int | tuple[int, ...]
    """The exit status (or the statuses a fix may reasonably choose)."""
    fragment: str
    files: dict[str, bytes] = field(default_factory=lambda: {"Procfile": PROCFILE})
    cluster: bool = False
    """Run in the shared cluster's directory (a supervisor is running)."""
    absent: str = ""
    """A fragment the message must not contain."""


#: 12 and 5000 in Arabic-Indic digits: int() reads them; a number flag must not.
TWELVE, FIVE_THOUSAND = "\u0661\u0662", "\u0665\u0660\u0660\u0660"
VERBS = ("kill", "stop", "start", "restart", "pause", "resume")


def ascii_id(text: str) -> str:
    """A row name pytest keeps as it is (it escapes other ids, and the fixture looks
    rows up by id): each non-ASCII character as ``#``."""
    return text if text.isascii() else \
        "".join(c if c.isascii() else "#" for c in text) + " (non-ASCII digits)"

ROWS: dict[str, Row] = {
    # -- the Procfile --
    "missing Procfile": Row(("up",), 2, "no Procfile at", files={}),
    "empty Procfile": Row(("up",), 2, "defines no processes", files={"Procfile": b""}),
    "binary Procfile": Row(("up",), 2, "not a text file",
                           files={"Procfile": b"\x7fELF\x02\x01\x01\x00\x00web: x\n"}),
    "malformed line": Row(("up",), 2, "Procfile:3: malformed line",
                          files={"Procfile": PROCFILE + b"# ok\nthis is not a process\n"}),
    "duplicate name": Row(("up",), 2, "(first on line 1)",
                          files={"Procfile": PROCFILE + b"\ngreeter: other\n"}),
    "illegal name": Row(("up",), 2, "'my.web' has illegal characters",
                        files={"Procfile": b"my.web: python a.py\n"}),
    "bad Procfile, detached": Row(("up", "-d"), 2, "Procfile:2",
                                  files={"Procfile": PROCFILE + b"nope\n"}),
    # -- flags of up --
    "scale unknown type": Row(("up", "--scale", "nope=2"), 2, "cannot scale 'nope'"),
    "scale negative": Row(("up", "--scale", "greeter=-1"), 2, "0 or more"),
    "scale not a number": Row(("up", "-c", "greeter=two"), 2, "not a whole number"),
    "bad restart policy": Row(("up", "--restart", "greeter=sometimes"), 2, "bad --restart"),
    "restart unknown type": Row(("up", "--restart", "nope=no"), 2, "'nope'"),
    "restart unknown type, detached": Row(("up", "-d", "--restart", "nope=no"), 2, "'nope'"),
    "negative grace": Row(("up", "--grace", "-1"), 2, "--grace"),
    "port in use": Row(("up", "-p", "{busy_port}"), 1, "is already in use by pid"),
    "port in use, detached": Row(("up", "-d", "-p", "{busy_port}"), 1,
                                 "is already in use by pid"),
    "port not a number": Row(("up", "-p", "http"), 2, "--port"),
    "unknown option": Row(("up", "--bogus"), 2, "--bogus"),
    # -- the state dir --
    **{f"state dir is a file: {' '.join(args)}": Row(
        args, (1, 2), ".devcluster",
        files={"Procfile": PROCFILE, ".devcluster": b"not a directory\n"})
       for args in (("up", "-d", "-p", "0"), ("up", "-p", "0"), ("ps",))},
    # -- env files --
    "bad .env line": Row(("up",), 2, ".env:2: malformed env line",
                         files={"Procfile": PROCFILE, ".env": b"A=1\nnot an assignment\n"}),
    "missing -e file": Row(("up", "-e", "nope.env"), 2, "nope.env"),
    # Issue 16: a port out of 1..65535 fails at once (it hung 65 s), naming type and port.
    "port over 65535": Row(("up", "-d", "-p", "70000"), 2, "port 70000 for greeter is out of range"),
    "negative port": Row(("up", "-d", "-p", "-5"), 2, "port -5 for greeter is out of range"),
    "second instance's port over 65535": Row(
        ("up", "-d", "-p", "65535", "-c", "greeter=2"), 2, "port 65536 for greeter.2"),
    "scale past port 65535": Row(("up", "-p", "65000", "-c", "greeter=600"), 2,
                                 "port 65536 for greeter.537"),
    "bad PORT in .env": Row(("up",), 2, "PORT='eighty'",
                            files={"Procfile": PROCFILE, ".env": b"PORT=eighty\n"}),
    # -- devcluster.toml (issue 17): file, line and key named; exit 2; nothing starts --
    **{f"devcluster.toml: {name}{', detached' if detached else ''}": Row(
        ("up", "-d", "-p", "0") if detached else ("up", "-p", "0"), 2, fragment,
        files={"Procfile": PROCFILE + b"web: python -m http.server $PORT\n",
               "devcluster.toml": toml})
       for detached in (False, True)
       for name, toml, fragment in (
           ("unknown key", b"[process.greeter]\nscael = 2\n",
            "devcluster.toml:2: process.greeter.scael is not a known key; did you mean 'scale'?"),
           ("wrong type", b"[cluster]\nport = 5000\ngrace = \"five\"\n",
            "devcluster.toml:3: cluster.grace"),
           ("bad value", b"[process.greeter]\nrestart = \"sometimes\"\n",
            "devcluster.toml:2: process.greeter.restart = 'sometimes' is not a restart policy"),
           ("type not in the Procfile", b"[process.greter]\nscale = 2\n",
            "devcluster.toml:1: [process.greter] names no Procfile type; did you mean 'greeter'?"),
           ("depends_on an unknown type", b"[process.web]\ndepends_on = [\"api\"]\n",
            "devcluster.toml:2: process.web.depends_on names 'api', not a Procfile type"),
           ("a cycle", b"[process.web]\ndepends_on = [\"greeter\"]\n"
                       b"[process.greeter]\ndepends_on = [\"web\"]\n",
            "makes a cycle: web -> greeter -> web"),
           ("bad probe", b"[process.web]\nready = { htp = \"/\" }\n",
            "devcluster.toml:2: process.web.ready.htp is not a probe; did you mean 'http'?"),
           ("http probe without a slash", b"[process.web]\nready = { http = \"healthz\" }\n",
            "devcluster.toml:2: process.web.ready.http"),
           ("bad log regex", b"[process.web]\nready = { log = \"(unclosed\" }\n",
            "devcluster.toml:2: process.web.ready.log"),
           ("weight over 1000", b"[process.web]\nweight = 5000\n",
            "devcluster.toml:2: process.web.weight"),
           ("env sets PORT", b"[process.web]\nenv = { PORT = \"1\" }\n",
            "devcluster.toml:2: process.web.env"),
           ("not TOML", b"[process.web\nscale = 2\n", "devcluster.toml:1: not valid TOML"),
           # Issue 26 item 11: a traceback, exit 1 and a cluster left running.
           ("ready_timeout inf", b"[process.web]\nready_timeout = inf\n",
            "devcluster.toml:2: process.web.ready_timeout = inf is out of range"),
           ("grace 1e20", b"[process.web]\ngrace = 1e20\n",
            "devcluster.toml:2: process.web.grace = 1e+20 is out of range"),
           ("env with a null byte", b'[process.web]\nenv = { A = "x\\u0000y" }\n',
            "devcluster.toml:2: process.web.env.A contains a null byte"),
       )},
    "missing --config": Row(("up", "--config", "nope.toml"), 2, "nope.toml does not exist"),
    "missing --config, detached": Row(("up", "-d", "--config", "nope.toml"), 2,
                                      "nope.toml does not exist"),
    "--where without a value": Row(("client", "-n", "1", "--where", "zone="), 2, "bad --where"),
    "--where not KEY=VALUE": Row(("call", "a.B/C", "--where", "zone"), 2, "bad metadata"),
    "meta unknown instance": Row(("meta", "nope", "zone=a"), 1, "unknown instance 'nope'",
                                 cluster=True),
    "meta bad item": Row(("meta", "greeter", "=a"), 2, "bad metadata '=a'", cluster=True),
    "meta without items": Row(("meta", "greeter"), 2, "KEY=VALUE", cluster=True),
    # -- weight (the registry; no supervisor needed) --
    **{ascii_id(f"weight {v}"): Row(("weight", "greeter", "--", v), 2, "weight must be an integer 0..1000",
                          cluster=True) for v in ("-1", "abc", "1e9", "1001", TWELVE, "1_0")},
    "weight, no registry": Row(("weight", "greeter", "1001"), 2, "0..1000"),
    "weight unknown instance": Row(("weight", "nope", "3"), 1, "unknown instance 'nope'",
                                   cluster=True),
    "enable unknown instance": Row(("enable", "nope"), 1, "unknown instance 'nope'",
                                   cluster=True),
    # -- control commands --
    # A well-formed name the cluster lacks: the world disagrees (1), known names listed.
    **{f"{verb} unknown instance": Row((verb, "nope"), 1,
                                       "unknown instance 'nope'; known instances: greeter",
                                       cluster=True) for verb in VERBS},
    "kill unknown signal": Row(("kill", "greeter", "--signal", "SIGNOPE"), 2, "unknown signal",
                               cluster=True),
    "kill without a name": Row(("kill",), 2, "name an instance", cluster=True),
    "scale negative, running": Row(("scale", "greeter=-1"), 2, "0 or more", cluster=True),
    "scale unknown type, running": Row(("scale", "nope=2"), 1, "unknown process type 'nope'",
                                       cluster=True),
    "up while running": Row(("up", "-d", "-p", "0"), 1, "already running", cluster=True),
    "corrupt registry": Row(("weight", "greeter", "2"), 1, "registry.json", files={
        "Procfile": PROCFILE, ".devcluster/registry.json": b"{not json"}),
    "client without a registry": Row(("client", "--count", "1"), 1, "no registry"),
    "client bad target": Row(("client", "--target", "static:///"), 2, "static"),
    "logs unknown instance": Row(("logs", "nope"), 1,
                                 "unknown instance 'nope'; known instances: greeter", cluster=True),
    # A path or a malformed name is a usage error (2) on every command, before any lookup.
    **{f"{verb} path as a name": Row((verb, "../../../outside"), 2, "is not an instance name",
                                     cluster=True) for verb in (*VERBS, "logs", "enable")},
    "weight path as a name": Row(("weight", "greeter/../x", "3"), 2, "is not an instance name",
                                 cluster=True),
    "logs negative lines": Row(("logs", "-n", "-1"), 2, "-1", cluster=True),
    # -- numbers on the command line (issue 26 items 11 and 16): ASCII digits, finite,
    # within a day; refused by the parser before anything runs --
    **{ascii_id(" ".join(args[:1] + args[-2:])): Row(args, 2, fragment) for args, fragment in (
        (("call", "a.B/C", "--interval", "inf"), "argument --interval: 'inf'"),
        (("call", "a.B/C", "--timeout", "inf"), "argument --timeout: 'inf'"),
        (("call", "a.B/C", "--timeout", "1e300"), "argument --timeout: '1e300' is out of range"),
        (("call", "a.B/C", "--interval", "nan"), "argument --interval: 'nan'"),
        (("call", "a.B/C", "-n", TWELVE), f"argument -n/--count: '{TWELVE}' is not a whole number"),
        (("client", "--timeout", "1e400"), "argument --timeout"),
        (("client", "-n", TWELVE), "argument -n/--count"),
        (("up", "--grace", "inf"), "argument --grace"),
        (("up", "--ready-timeout", "1e20"), "argument --ready-timeout"),
        (("up", "-p", FIVE_THOUSAND), "argument -p/--port"),
        (("up", "-c", f"greeter={TWELVE}"), f"bad scale 'greeter={TWELVE}'"),
        (("logs", "-n", TWELVE), "argument -n/--lines"),
        (("events", "--since", "inf"), "argument --since"),
        (("demo", "--speed", "nan"), "argument --speed"),
    )},
    "call --proto README.md": Row(("call", "a.B/C", "--proto", "README.md"), 2,
                                  "README.md:1:1: Expected top-level statement", absent="absl",
                                  files={"Procfile": PROCFILE, "README.md": b"# Hello\n"}),
    "scale in Arabic-Indic digits, running": Row(("scale", f"greeter={TWELVE}"), 2,
                                                 "not a whole number", cluster=True),
    "console port in use": Row(("up", "-p", "0", "--console", "--console-port", "{busy_port}"),
                               (1, 2), "pick another --console-port", absent="another --port"),
    "console port in use, detached": Row(
        ("up", "-d", "-p", "0", "--console", "--console-port", "{busy_port}"), (1, 2),
        "pick another --console-port", absent="another --port"),
    "logs, no merged log yet": Row(("logs",), 1, "devcluster", absent="None", files={
        "Procfile": PROCFILE, ".devcluster/logs/supervisor.out": b"crashed at start\n"}),
    **{f"{verb} without a cluster": Row((verb, "greeter"), 1, "no cluster running")
       for verb in VERBS},
    "ps without a cluster": Row(("ps",), 1, "no cluster running"),
    "down without a cluster": Row(("down",), 1, "no cluster running"),
    "scale without a cluster": Row(("scale", "greeter=2"), 1, "no cluster running"),
    "logs without a cluster": Row(("logs",), 1, "no cluster running"),
}

#: Rows that show a known product bug: name -> reason (strict xfail). None open now.
BUGS: dict[str, str] = {}


def _params() -> list[object]:
    return [pytest.param(row, id=name, marks=[pytest.mark.xfail(strict=True, reason=BUGS[name])]
                         if name in BUGS else []) for name, row in ROWS.items()]


def digest(directory: Path) -> dict[str, str]:
    """Hashes of every file the user wrote (the state dir is devcluster's own)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))
            if p.is_file() and ".devcluster" not in p.parts}


@dataclass
class Outcome:
    result: subprocess.CompletedProcess[str]
    files_before: dict[str, str]
    files_after: dict[str, str]


@dataclass
class SharedCluster:
    """What the rows run against the shared cluster did to it (nothing, we hope)."""

    registry_unchanged: bool
    state: str


Cli = Callable[..., subprocess.CompletedProcess[str]]
SHARED = "__shared_cluster__"


def _run(cli: Cli, row: Row, directory: Path, busy_port: int) -> Outcome:
    before = digest(directory)
    # A row that unexpectedly succeeds (a foreground `up`) must not hang the suite.
    result = cli(*(arg.format(busy_port=busy_port) for arg in row.args), cwd=directory,
                 timeout=30)
    return Outcome(result, before, digest(directory))


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             devcluster_cli: Cli,
             processes_under: Callable[[Path], list[object]]) -> Iterator[dict[str, Any]]:
    """Run every selected row at once (each CLI start is ~0.3 s of CPU: use every core).

    Rows get their own directory; ``cluster`` rows share one running cluster. At the
    end, nothing may run under any of these directories.
    """
    selected = [item.callspec.id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    base = tmp_path_factory.mktemp("cli-errors")
    shared = base / "shared"
    shared.mkdir()
    (shared / "Procfile").write_bytes(PROCFILE)
    cluster = Cluster(shared / "Procfile", port=0, grace=1)
    jobs: dict[str, tuple[Row, Path]] = {}
    for number, name in enumerate(selected):
        row = ROWS[name]
        directory = shared if row.cluster else base / f"row{number}"
        if not row.cluster:
            for rel, data in row.files.items():
                (directory / rel).parent.mkdir(parents=True, exist_ok=True)
                (directory / rel).write_bytes(data)
            directory.mkdir(exist_ok=True)
        jobs[name] = (row, directory)
    try:
        registry = cluster.state_dir / "registry.json"
        uses_cluster = any(row.cluster for row, _ in jobs.values())
        if uses_cluster:
            cluster.up()
        registry_before = registry.read_bytes() if uses_cluster else b""
        with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool, \
                socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            futures = {name: pool.submit(_run, devcluster_cli, row, d, port)
                       for name, (row, d) in jobs.items()}
            done: dict[str, Any] = {name: f.result() for name, f in futures.items()}
        if uses_cluster:
            done[SHARED] = SharedCluster(registry.read_bytes() == registry_before,
                                         cluster.instance("greeter").state)
        yield done
    finally:
        cluster.down()
        assert processes_under(base) == []


@pytest.mark.parametrize("row", _params())
def test_user_mistake(row: Row, request: pytest.FixtureRequest,
                      outcomes: dict[str, Any]) -> None:
    outcome = outcomes[request.node.callspec.id]
    result = outcome.result
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert row.fragment in err, err
    if row.absent:
        assert row.absent not in err, err
    assert err.startswith("devcluster: error: "), err
    assert err.count("devcluster: error:") == 1, err
    codes = row.code if isinstance(row.code, tuple) else (row.code,)
    assert result.returncode in codes, err
    assert result.stdout == ""
    assert outcome.files_after == outcome.files_before  # the user's files are unchanged
    if row.cluster:  # no mistake changed the running cluster or its registry
        shared: SharedCluster = outcomes[SHARED]  # type: ignore[assignment]
        assert shared.registry_unchanged
        assert shared.state == "serving"


def test_command_not_found_names_it_and_keeps_the_rest(tmp_path: Path, run_cli: Any) -> None:
    """A Procfile line whose program does not exist: `up -d` names it, exits 1, and the
    other instances keep serving (the user fixes the line and `start`s it)."""
    (tmp_path / "Procfile").write_bytes(
        PROCFILE + b"bad: no-such-command-xyz --port $PORT\n")
    try:
        result = run_cli("up", "-d", "-p", "0")
        assert result.returncode == 1
        errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and "no-such-command-xyz" in errors[0], result.stderr
        assert "Traceback" not in result.stderr
        assert " serving " in result.stdout  # the greeter still serves
    finally:
        assert run_cli("down", "--grace", "1").returncode == 0


def test_control_socket_of_another_user_is_refused(tmp_path: Path, run_cli: Any) -> None:
    """Commands go to whoever owns the socket: one that is not ours is refused."""
    (tmp_path / "Procfile").write_bytes(PROCFILE)
    assert run_cli("up", "-d", "-p", "0").returncode == 0
    sock = Path(os.path.realpath(layout(tmp_path / ".devcluster").socket))
    try:
        assert sock.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / ".devcluster").stat().st_mode & 0o777 == 0o700
        os.chown(sock, 65534, 65534)  # as if another user had put it there
        result = run_cli("ps")
        assert result.returncode == 1
        errors = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and "belongs to uid 65534" in errors[0], result.stderr
    finally:
        os.chown(sock, os.getuid(), os.getgid())
        assert run_cli("down", "--grace", "1").returncode == 0


def test_events_skip_a_line_that_is_not_json_and_never_print_one(tmp_path: Path,
                                                                  run_cli: Any) -> None:
    """Issue 26 item 11: an events.jsonl line with "time": 1e400 crashed `events` with a
    traceback, and `events --json` printed Infinity, which no JSON parser reads."""
    import json
    import time

    from devcluster.events import Event, EventKind, EventLog

    (tmp_path / "Procfile").write_bytes(PROCFILE)
    state = tmp_path / ".devcluster"
    state.mkdir(mode=0o700)
    with EventLog(state) as log:
        log.append(Event(time.time(), EventKind.STARTED, "greeter", new=4242))
    with open(state / "events.jsonl", "a") as f:
        f.write('{"time": 1e400, "kind": "started", "instance": "greeter.9"}\n')
        f.write('{"time": 5, "kind": "weight", "instance": "greeter.8", "new": 1e400}\n')
    plain = run_cli("events")
    assert plain.returncode == 0 and "Traceback" not in plain.stderr, plain.stderr
    assert "greeter started" in plain.stdout and "greeter.9" not in plain.stdout
    # ...and says so in one line on stderr, naming the lines.
    assert plain.stderr.strip() == ("devcluster: note: skipped 2 line(s) of events.jsonl "
                                    "that are not events (line 2, 3)"), plain.stderr

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    as_json = run_cli("events", "--json")
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.splitlines()
    assert [json.loads(ln, parse_constant=strict)["instance"] for ln in lines] == ["greeter"]


def test_logs_n_past_any_log_shows_all_of_it(tmp_path: Path, run_cli: Any) -> None:
    """Issue 26 item 11: `logs -n 99999999999999999999` was an OverflowError traceback. A
    count past any log's length means the whole log, as `tail -n` has it (clamped)."""
    (tmp_path / "Procfile").write_bytes(PROCFILE)
    assert run_cli("up", "-d", "-p", "0").returncode == 0
    try:
        result = run_cli("logs", "-n", "99999999999999999999")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stdout.strip()
    finally:
        assert run_cli("down", "--grace", "1").returncode == 0
