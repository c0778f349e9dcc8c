"""Every command of ``devcluster``: its name, its help, its options, and where its code is.

This module is the one command-line parser. It imports argparse and nothing heavy: the
top-level help lists the commands from :data:`COMMANDS` alone, and only the command that
runs gets its parser built (:func:`build`) and its module imported (by
:mod:`devcluster.cli.runner`). A command's options are declared here, its work is done
in ``devcluster.cli.<module>.<func>``, called with the parsed options as keywords.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from devcluster import defaults
from devcluster.cli.argtypes import decimal, line_count, seconds, whole
from devcluster.errors import UsageError

Declare = Callable[[argparse.ArgumentParser], None]


class CommandLineError(UsageError):
    """A command line the parser refused: exit status 2, one line naming the fix."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a :class:`CommandLineError`, not usage text and exit.

    :mod:`devcluster.cli.runner` turns every error into one line on stderr, so a
    mistake of the parser looks like any other mistake."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(f"{message} (see `{self.prog} --help`)")


@dataclass(frozen=True)
class Command:
    """A command: its help (a summary line, more text, an example) and its options.

    ``place``: it takes ``--procfile/--file`` and ``--state-dir`` (and ``--registry``
    when ``registry``); the runner turns them into a :class:`~devcluster.cli.place.Place`
    passed as ``at``. ``fixed``: keywords the function always gets (a verb's name)."""

    name: str
    module: str
    func: str
    summary: str
    example: str
    declare: Declare | None = None
    body: str = ""
    place: bool = True
    registry: bool = False
    json: str | None = "Machine-readable output."
    fixed: Mapping[str, str] = field(default_factory=dict)

    @property
    def help(self) -> str:
        """The whole help text: summary, then the rest."""
        return f"{self.summary}\n\n{self.body}".strip()


# -- the options ------------------------------------------------------------------------

def _names(p: argparse.ArgumentParser, metavar: str = "NAME",
           what: str = "Instances (server1, greeter.2) or process types (greeter).",
           every: str = "Every instance.") -> None:
    p.add_argument("names", nargs="*", metavar=metavar, help=what)
    p.add_argument("--all", dest="all_", action="store_true", help=every)


def _no_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help="Return without waiting for the change to happen.")


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="Only instances whose registry metadata has KEY=VALUE (repeatable: "
                        "all must match; see `devcluster meta`).")


def _up(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--env", action="append", default=[], metavar="FILE",
                   help="Extra env file (repeatable).")
    p.add_argument("-c", "--scale", action="append", default=[], metavar="TYPE=N",
                   help="TYPE=N (repeatable).")
    p.add_argument("-p", "--port", type=whole, metavar="PORT",
                   help="Base port ($PORT of the first instance); 0 lets servers pick. Default: "
                        f"[cluster] port of devcluster.toml, else {defaults.BASE_PORT}.")
    p.add_argument("--grace", type=seconds, metavar="SECONDS",
                   help="Seconds instances get to stop on SIGINT. Default: the file's grace, "
                        f"else {defaults.GRACE:g}.")
    p.add_argument("--restart", action="append", default=[], metavar="TYPE=POLICY",
                   help="TYPE=POLICY: no, on-failure (default), always.")
    p.add_argument("-d", "--detach", action="store_true",
                   help="Run in the background; return once every instance serves.")
    p.add_argument("--ready-timeout", type=seconds, metavar="SECONDS",
                   help="Seconds an instance gets to serve. Default: the file's "
                        f"ready_timeout, else {defaults.READY_TIMEOUT:g}.")
    p.add_argument("--console", action="store_true",
                   help="Also serve the web console (see `devcluster console`) while the "
                        "cluster runs; its URL is printed first (with -d: when up returns, "
                        "and kept in the state dir's private/console.url).")
    p.add_argument("--console-port", type=whole, default=0, metavar="PORT",
                   help="Port of --console on 127.0.0.1 (default: a free one).")
    p.add_argument("--watch", action="store_true",
                   help="Rolling reload when files change (default: the Procfile's "
                        "directory; or the PATHs); see `devcluster reload`.")
    p.add_argument("--config", metavar="FILE",
                   help="Project file (default: devcluster.toml beside the Procfile, if there "
                        "is one). Flags override it.")
    p.add_argument("watch_paths", nargs="*", metavar="PATH", help="With --watch: what to watch.")


def _down(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grace", type=seconds, metavar="SECONDS", help="Seconds instances get to stop.")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="Instance (default: the merged log).")
    p.add_argument("-f", "--follow", action="store_true", help="Keep printing new lines.")
    p.add_argument("-n", "--lines", type=line_count, default=50, metavar="N",
                   help="Lines to show (default: 50).")


def _events(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=decimal, metavar="SECONDS",
                   help="Only the events of the last SECONDS seconds.")
    p.add_argument("-f", "--follow", action="store_true",
                   help="Keep printing new events (Ctrl-C to stop).")


def _kill(p: argparse.ArgumentParser) -> None:
    _names(p)
    p.add_argument("-s", "--signal", default="SIGKILL", metavar="SIGNAL",
                   help="Signal to send (default: SIGKILL).")


def _waiting_verb(p: argparse.ArgumentParser) -> None:
    _names(p)
    _no_wait(p)


def _scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("counts", nargs="+", metavar="TYPE=N", help="TYPE=N, e.g. greeter=5.")
    _no_wait(p)


def _weight(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="Instance or process type.")
    p.add_argument("value", metavar="WEIGHT", help="Integer 0..1000; 0 drains.")


def _fault(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="An instance, a process type or a service.")
    p.add_argument("--delay", metavar="DURATION[:PERCENT]",
                   help="Delay calls: 200ms, 1.5s or 2 (seconds); percent default 100.")
    p.add_argument("--abort", metavar="CODE[:PERCENT]",
                   help="Fail calls with a gRPC status (UNAVAILABLE or 14); percent default 100.")
    p.add_argument("--clear", action="store_true", help="Remove the fault.")


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="Instance or process type.")


def _reload(p: argparse.ArgumentParser) -> None:
    _names(p, "NAME|TYPE", "Instances or process types to replace even if unchanged.",
           "Replace every instance.")


def _console(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--port", type=whole, default=0,
                   help="Port on 127.0.0.1 (default: a free one).")
    p.add_argument("--open", dest="open_", action="store_true", help="Open the page in a browser.")


def _client(p: argparse.ArgumentParser) -> None:
    from devcluster.cli.targets import GRPC_POLICIES
    from devcluster.client.picker import DEFAULT_POLICY, policies_help

    p.add_argument("--service", metavar="SERVICE",
                   help="Service to call (default: every serving instance).")
    p.add_argument("--name", default="world", metavar="NAME",
                   help="Name to greet; calls send NAME-SEQ (default: world).")
    p.add_argument("-n", "--count", type=whole, metavar="N",
                   help="Calls to make (default: until Ctrl-C).")
    p.add_argument("--interval", type=seconds, default=0.5, metavar="SECONDS",
                   help="Seconds between calls (default: 0.5).")
    p.add_argument("-C", "--concurrency", type=whole, default=1, metavar="N",
                   help="Calls in flight (default: 1).")
    p.add_argument("--timeout", type=seconds, default=2.0, metavar="SECONDS",
                   help="Deadline of each call, seconds (default: 2).")
    p.add_argument("--policy", metavar="POLICY",
                   help=f"devcluster's balancer ({DEFAULT_POLICY} by default): {policies_help()}. "
                        f"With a grpc --target, grpc's own {' (default) or '.join(GRPC_POLICIES)}."
                   .replace("%", "%%"))
    p.add_argument("--hedge", type=seconds, metavar="SECONDS",
                   help="Also send a call unanswered for SECONDS to a second instance; the "
                        "first answer wins (a frozen instance then costs no call). For "
                        "idempotent methods only (SayHello is).")
    p.add_argument("--target", metavar="TARGET",
                   help="Call these servers instead of the registry: static:///H:P,H:P,... (a "
                        "fixed list, devcluster's balancer, no cluster needed), or a grpc "
                        "target (ipv4:H:P,H:P / dns:///H:P / H:P) resolved and balanced by "
                        "grpc itself.")
    p.add_argument("--xds", action="store_true",
                   help="Call through grpc's own xDS client instead: xds:///SERVICE with the "
                        "running cluster's bootstrap (see `devcluster xds`), balanced by its "
                        "weights and health like any gRPC client's; not with --policy, "
                        "--hedge, --where or --target.")
    _where(p)


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", type=decimal, default=1.0, metavar="X",
                   help="Slow down (0.5 = half speed) for a talk.")
    p.add_argument("--lesson", action="store_true",
                   help="The article's progression instead: one address, the comma list, "
                        "static + pick_first, round_robin, the registry, weights, faults.")


def _call(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", metavar="METHOD", help="package.Service/Method, as grpcurl writes "
                   "it, e.g. helloworld.Greeter/SayHello.")
    p.add_argument("-d", "--data", default="{}", metavar="JSON", help="The request as JSON.")
    p.add_argument("-n", "--count", type=whole, default=1, metavar="N",
                   help="Calls to make (default: 1).")
    p.add_argument("--interval", type=seconds, default=0.0, metavar="SECONDS",
                   help="Seconds between calls (default: 0).")
    p.add_argument("--service", metavar="SERVICE",
                   help="Only instances of this service (default: every serving instance).")
    p.add_argument("--timeout", type=seconds, default=5.0, metavar="SECONDS",
                   help="Deadline of each call, seconds (default: 5).")
    p.add_argument("--proto", metavar="FILE", help="A .proto defining the method, for servers "
                   "without reflection (compiled now with grpcio-tools).")
    p.add_argument("-I", "--import-path", action="append", default=[], metavar="DIR",
                   help="Where --proto's imports are (repeatable).")
    _where(p)


def _meta(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="Instance name, e.g. echo.1.")
    p.add_argument("items", nargs="+", metavar="KEY=VALUE",
                   help="KEY=VALUE to set, KEY= to remove.")


def _init(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", nargs="?", default=".", metavar="DIR",
                   help="The folder (default: this one; made if missing).")
    p.add_argument("--lang", choices=("python", "node"), default="python",
                   help="The server's language: python (grpc.aio, the default) or node "
                        "(grpc-js).")
    p.add_argument("--name", metavar="SERVICE",
                   help="The process type in the Procfile (default: the proto's service, "
                        "else the folder's name); a new proto's service is named after it.")


# -- the commands, in the order of --help -------------------------------------------------

_VERB_EXAMPLE = "devcluster {0} server2   (or a type: {0} greeter; or --all)"


def _verb(name: str, summary: str, waits: bool) -> Command:
    """A verb of the control plane; only a verb that waits for its change has --no-wait."""
    return Command(name, "act", "verb", summary, _VERB_EXAMPLE.format(name),
                   _waiting_verb if waits else _names, fixed={"verb": name})


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("init", "init", "init",
            "Start a project: a proto, a server, a Procfile, devcluster.toml and a test.",
            "devcluster init shop --lang python   (then: cd shop && devcluster up)", _init,
            place=False, json="The folder, the service and the files written.",
            body="A folder with a .proto: its first service is used. init never overwrites "
                 "a file: if\nany file it would write is there, it writes nothing (exit 1)."),
    Command("up", "cluster", "up",
            "Start every instance of the Procfile and supervise them (Ctrl-C stops them all).",
            "devcluster up -d -c greeter=3 -p 0   (or: devcluster up --watch src)", _up,
            body="Settings per process type (scale, restart, readiness probe, depends_on, env,\n"
                 "metadata...) come from devcluster.toml beside the Procfile when there is one.",
            registry=True, json="With -d: the instances as JSON, as `ps --json`."),
    Command("down", "cluster", "down",
            "Stop the running cluster gracefully; returns when every process is gone.",
            "devcluster down --grace 2", _down),
    Command("ps", "look", "ps",
            "List instances: state, pid, address, weight, uptime, restarts, CPU, memory.",
            "devcluster ps --json", registry=True,
            body="With an etcd registry: every instance of every supervisor registered there."),
    Command("logs", "look", "logs",
            "Show (and with -f follow) the log of one instance or of the whole cluster.",
            "devcluster logs server1 -f -n 20", _logs,
            json="One JSON object a line: time, instance, line."),
    Command("registry", "look", "registry",
            "Print the registry: every record with weight, enabled and state.",
            "devcluster registry --json", registry=True),
    Command("xds", "look", "xds",
            "Print how to point any gRPC client (Go, Java, Node, C++, Python) at the cluster\n"
            "over xDS: the bootstrap file to export, the server, the xds:/// targets.",
            "devcluster xds --json", registry=True,
            body="The supervisor serves ADS on 127.0.0.1 and writes the bootstrap file into the "
                 "state\ndir while the cluster runs; weights, drains, stops and restarts reach "
                 "every xDS client.\nIn a shell: eval \"$(devcluster xds)\", then dial "
                 "xds:///greeter.",
            json="bootstrap, server_uri, listeners, bootstrap_config."),
    Command("events", "events", "events",
            "Show (and with -f follow) the cluster's timeline: starts, exits with code or\n"
            "signal, restarts, state, weight and enable changes, and who asked for each.",
            "devcluster events --since 60 -f", _events,
            body="The timeline of the current (or last) `up`; the one before is events.1.jsonl "
                 "in the\nstate dir.",
            json="One JSON object a line: time, kind, instance, old, new, code, signal, who, "
                 "source, detail."),
    Command("kill", "act", "verb",
            "Simulate a crash: SIGKILL (or --signal) to the instance's process group.",
            "devcluster kill server2 --signal SIGTERM", _kill, fixed={"verb": "kill"}),
    _verb("stop", "Stop gracefully: draining, SIGINT, SIGKILL after the grace period.", False),
    _verb("start", "Start a stopped/killed/exited/failed instance (same name, port, env).", True),
    _verb("restart", "Graceful stop, then start again.", True),
    _verb("pause", "Freeze with SIGSTOP: a hung server that stays registered.", False),
    _verb("resume", "Thaw a paused instance with SIGCONT.", False),
    Command("scale", "act", "scale", "Grow or shrink a process type while the cluster runs.",
            "devcluster scale greeter=5 web=2", _scale),
    Command("weight", "act", "weight",
            "Set the weight of an instance in the registry (works without a supervisor).",
            "devcluster weight server1 5   (server1 then gets 5/7 of the calls of three)",
            _weight, registry=True),
    Command("fault", "act", "fault",
            "Delay or fail a share of the calls an instance (or a type, or a service) serves.",
            "devcluster fault greeter.2 --delay 200ms:50 --abort UNAVAILABLE:10", _fault,
            registry=True,
            body="Stored in the registry: xDS clients (HTTPFault) and devcluster's balanced\n"
                 "clients apply it alike; ps, top, the console and events show it.\n"
                 "On one instance, only the calls it serves are hit. --clear removes it.",
            json="The records after, with their fault."),
    Command("enable", "act", "enable", "Let an instance receive calls again.",
            "devcluster enable server3", _name, registry=True, fixed={"verb": "enable"}),
    Command("disable", "act", "enable", "Take an instance out of rotation (it keeps running).",
            "devcluster disable server3", _name, registry=True, fixed={"verb": "disable"}),
    Command("reload", "reload", "reload",
            "Rolling reload: start each replacement, wait until it serves, switch the registry,\n"
            "drain and stop the old process; one instance at a time, so no call fails.",
            "devcluster reload greeter   (or: reload --all; reload to apply edits)", _reload,
            body="Re-reads the Procfile, .env and devcluster.toml first: changed types reload, "
                 "new\ntypes start, removed types stop. With no NAME, only that. A replacement "
                 "that does\nnot serve is stopped, the old instance keeps serving, and the "
                 "reload stops (exit 1)."),
    Command("top", "live", "top",
            "Full-screen live view: state, weight, CPU, memory and calls/s per instance.",
            "devcluster top", registry=True, json=None,
            body="Keys: k kill, s stop/start, r restart, p pause/resume, +/- weight,\n"
                 "d disable/enable, q quit. Destructive keys ask first."),
    Command("console", "live", "console",
            "Web console on 127.0.0.1: live instances, weights, actions, a calls/s chart.",
            "devcluster console --open", _console, registry=True, json=None,
            body="Prints its URL with an access token. Scripts use the same JSON API as the "
                 "page\nwith `Authorization: Bearer TOKEN` (see docs/live-views.md)."),
    Command("client", "tools", "client",
            "Call SayHello in a loop through the balancing client; print who served each call.",
            "devcluster client --service server -n 20 --interval 0.1 --hedge 0.1", _client,
            body="Ctrl-C or SIGTERM stops it with a summary.", registry=True,
            json="One JSON object per call, then a summary object."),
    Command("demo", "tools", "demo",
            "The seed article's story in one command: weights, a crash, a freeze, a drain.",
            "devcluster demo --speed 0.5", _demo, place=False,
            body="Exits 0 only if every step behaved, so it doubles as a smoke test.",
            json="Print the summary table as JSON on stdout (the story goes to stderr)."),
    Command("call", "call", "call",
            "Call any unary method through the balancing client; print who answered each call.",
            "devcluster call helloworld.Greeter/SayHello -d '{\"name\": \"x\"}' -n 6", _call,
            body="The request and reply types come from the server's reflection service, or "
                 "from\n--proto for a server without it.", registry=True,
            json="One JSON object per call, as `client --json`, plus `reply`."),
    Command("meta", "call", "meta",
            "Set an instance's registry metadata (KEY=VALUE), or remove a key (KEY=).",
            "devcluster meta echo.1 zone=b canary=", _meta, registry=True,
            body="Clients pick instances by it: devcluster client --where zone=b."),
)}

#: Commands where ``-f`` after the command means follow; elsewhere it is a misplaced Procfile.
FOLLOWING = frozenset({"logs", "events"})

ABOUT = ("A real local gRPC cluster in one command: run a Procfile of servers, then kill, "
         "pause,\ndrain and reweight single instances while a balancing client shows which "
         "instance\nserved each call.")
TOP_EXAMPLE = "devcluster up -d && devcluster client"


def build(command: Command) -> Parser:
    """The parser of one command (only the command that runs needs one)."""
    p = Parser(prog=f"devcluster {command.name}", description=command.help,
               epilog=f"Example: {command.example}", add_help=False, allow_abbrev=False,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action="help", help="Show this message and exit.")
    if command.declare is not None:
        command.declare(p)
    if command.place:
        p.add_argument("--procfile", "--file", metavar="FILE",
                       help="Procfile to use (or -f FILE before the command; default: ./Procfile).")
        p.add_argument("--state-dir", metavar="DIR",
                       help="State dir (default: .devcluster beside the Procfile; env "
                            f"{defaults.ENV_HOME}).")
    if command.registry:
        p.add_argument("--registry", metavar="URL",
                       help="etcd://host:2379[/prefix] to use etcd (env DEVCLUSTER_REGISTRY); "
                            "default: the state dir's registry.json.")
    if command.json is not None:
        p.add_argument("--json", dest="as_json", action="store_true", help=command.json)
    return p


def _shortened(text: str, width: int) -> str:
    """``text`` on one line, cut at a word with ``...`` when longer than ``width``."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    return text[:width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def top_help() -> str:
    """``devcluster --help``: the global options and one line per command."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {c.name:<{width}}  {_shortened(c.summary, 88 - width)}" for c in COMMANDS.values()]
    return "\n".join([
        "usage: devcluster [-f PROCFILE] COMMAND [ARGS]...", "", ABOUT, "",
        "options:",
        "  -f, --file, --procfile PROCFILE",
        "                  Procfile to use, before the command as in docker compose:",
        "                  devcluster -f other/Procfile up. Default: ./Procfile.",
        "  -V, --version   Print the version and exit.",
        "  --install-completion [SHELL]",
        "                  Install completion for the shell (bash, zsh, fish; default: $SHELL).",
        "  --show-completion [SHELL]",
        "                  Show the completion script, to copy it or customize the installation.",
        "  -h, --help      Show this message and exit.", "",
        "commands:", *lines, "",
        "`devcluster COMMAND --help` tells more.", "",
        f"Example: {TOP_EXAMPLE}"])
