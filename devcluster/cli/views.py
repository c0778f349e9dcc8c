"""The CLI's one output stack: tables, colours, the one-line error, and :func:`render`,
which writes a command's :class:`Output` as text or as JSON (``--json``).

Plain aligned text and ANSI colour, no rich: rich costs a command more CPU than its work
(issue 25), and one stack means one look. Colour follows NO_COLOR / FORCE_COLOR / "is it a
terminal", as the log stream does. The long-running stories (``client``, ``demo``) write
to a :class:`Terminal`; only ``top`` draws with rich, through textual.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

#: The colour of each state (names of the terminal's standard colours).
STATE_STYLE = {"serving": "green", "starting": "yellow", "draining": "yellow",
               "paused": "magenta", "unhealthy": "red", "backoff": "yellow", "failed": "red",
               "killed": "red", "exited": "red", "stopped": "dim"}
_ANSI = {"green": "32", "yellow": "33", "magenta": "35", "red": "31", "cyan": "36", "dim": "2",
         "bold": "1", "italic": "3"}

INSTANCE_COLUMNS = ("NAME", "STATE", "PID", "ADDRESS", "WEIGHT", "UPTIME", "RESTARTS", "CPU%",
                    "RSS")
_RIGHT = {"PID", "WEIGHT", "RESTARTS", "CPU%", "RSS"}
RECORD_COLUMNS = ("NAME", "SERVICE", "ADDRESS", "WEIGHT", "ENABLED", "STATE", "PID")


def use_colour(stream: TextIO) -> bool:
    """NO_COLOR (https://no-color.org) wins; then FORCE_COLOR; then "is it a terminal"."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, style: str, colour: bool) -> str:
    return f"\x1b[{_ANSI[style]}m{text}\x1b[0m" if colour and style in _ANSI else text


def uptime(seconds: float | None) -> str:
    """``59s``, ``1m00s``, ``2h05m``: whole seconds elapsed, as a clock shows them (floored
    first, so 119.7 s is ``1m59s``, never ``1m60s``).

    >>> [uptime(s) for s in (None, 59.7, 119.7, 3599.9, 7500)]
    ['-', '59s', '1m59s', '59m59s', '2h05m']
    """
    if not seconds:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def mib(n: int | None) -> str:
    return f"{n / 1048576:.1f} MiB" if n else "-"


def known(value: object, fmt: str = "{}") -> str:
    """A value of the instance schema; None (not known on this path) shows as ``-``."""
    return "-" if value is None else fmt.format(value)


def table(columns: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]], colour: bool,
          right: Iterable[str] = (), title: str = "",
          footer: Sequence[Sequence[tuple[str, str]]] = ()) -> str:
    """Columns two spaces apart, a bold header; each cell is ``(text, style)``.

    ``title`` goes on its own line above; ``footer`` rows (a total) below a dashed line."""
    body = [list(row) for row in rows]
    ends = [list(row) for row in footer]
    widths = [max([len(c), *(len(row[i][0]) for row in body + ends)])
              for i, c in enumerate(columns)]
    right = set(right)

    def line(cells: Sequence[tuple[str, str]]) -> str:
        out = []
        for (text, style), column, width in zip(cells, columns, widths, strict=True):
            pad = " " * (width - len(text))
            out.append(pad + paint(text, style, colour) if column in right
                       else paint(text, style, colour) + pad)
        return "  ".join(out).rstrip()

    lines = [paint(title, "bold", colour)] if title else []
    lines += [line([(c, "bold") for c in columns]), *(line(row) for row in body)]
    if ends:
        lines += ["  ".join("-" * w for w in widths), *(line(row) for row in ends)]
    return "\n".join(lines)


def check_mark(ok: bool) -> tuple[str, str]:
    """A step's verdict as a cell: a green tick or a red cross."""
    return ("✓", "green") if ok else ("✗", "red")


class Terminal:
    """Where ``client`` and ``demo`` write as they go: lines, rules and tables on one
    stream, coloured when :func:`use_colour` says so. Tests pass a StringIO.

    Lines are written whole and flushed: a piped run shows each call as it happens."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None,
                 width: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = use_colour(self.stream) if colour is None else colour
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width or (shutil.get_terminal_size().columns if tty else 80)

    def paint(self, text: str, style: str) -> str:
        return paint(text, style, self.colour)

    def print(self, text: str = "", style: str = "") -> None:
        """One line (or several), all of it in ``style``."""
        self.stream.write(self.paint(text, style) + "\n")
        self.stream.flush()

    def rule(self, title: str) -> None:
        """A step's heading: ``──── title ────`` across the width."""
        text = f" {title} "
        left = max(2, (self.width - len(text)) // 2)
        right = max(2, self.width - len(text) - left)
        self.print("─" * left + self.paint(text, "bold") + "─" * right)


def terminal(stderr: bool = False) -> Terminal:
    """The Terminal of stdout (or stderr: ``demo --json`` keeps stdout for its JSON)."""
    return Terminal(sys.stderr if stderr else sys.stdout)


#: Longest ``last_exit`` a ``ps`` cell shows: the table stays as wide as a terminal;
#: the whole text is in ``ps --json`` and the log.
LAST_EXIT_WIDTH = 56


def state_text(row: Mapping[str, Any]) -> str:
    """``failed (exit 1)``; a long reason cut to its first clause, or to
    :data:`LAST_EXIT_WIDTH` characters.

    >>> state_text({"state": "failed", "last_exit": "preload failed: importing 'm' started "
    ...             "threads (2 Python, 2 in all); a fork copies only one of them"})
    "failed (preload failed: importing 'm' started threads...)"
    """
    state = str(row["state"]) + (" (disabled)" if row.get("enabled") is False else "")
    if row.get("last_exit") and row["state"] in {"exited", "failed", "killed", "backoff"}:
        why = " ".join(str(row["last_exit"]).split())
        if len(why) > LAST_EXIT_WIDTH:  # its first clause, if short enough
            clause = re.split(r" \(|; ", why, maxsplit=1)[0]
            why = (clause if len(clause) <= LAST_EXIT_WIDTH - 3 else
                   why[:LAST_EXIT_WIDTH - 3].rstrip(" ,;:(")) + "..."
        state += f" ({why})"
    if row.get("fault"):
        state += f" (fault: {row['fault']})"
    return state


def instances_table(rows: Sequence[Mapping[str, Any]], colour: bool) -> str:
    """``ps``: one line per instance of the instance schema."""
    return table(INSTANCE_COLUMNS, ([
        (r["name"], ""), (state_text(r), STATE_STYLE.get(r["state"], "")),
        (str(r["pid"] or "-"), ""), (r["address"] or "-", ""), (known(r["weight"]), ""),
        (uptime(r["uptime_s"]), ""), (str(r["restarts"]), ""),
        (known(r["cpu_percent"], "{:.1f}"), ""), (mib(r["rss_bytes"]), ""),
    ] for r in rows), colour, _RIGHT)


def records_table(title: str, records: Iterable[Any], colour: bool) -> str:
    """``registry``: the raw records, under a title naming the registry and its revision."""
    body = ([(r.name, ""), (r.service, ""), (r.address or "-", ""), (str(r.weight), ""),
             ("yes" if r.enabled else "no", ""), (r.state.value, ""), (str(r.pid or "-"), "")]
            for r in records)
    return f"{title}\n{table(RECORD_COLUMNS, body, colour)}"


def action_lines(rows: Sequence[Mapping[str, Any]], unchanged: Iterable[str]) -> list[str]:
    """What a verb did to each instance: ``server2: killed (signal SIGKILL)``."""
    same = set(unchanged)
    lines = []
    for r in rows:
        extra = f" ({r['last_exit']})" if r.get("last_exit") and r["state"] in {
            "exited", "failed", "killed", "backoff", "stopped"} else ""
        where = f" on {r['address']}" if r["state"] == "serving" and r["address"] else ""
        if r["name"] in same:
            lines.append(f"{r['name']} is already {r['state']}{where}; nothing to do")
        else:
            lines.append(f"{r['name']}: {r['state']}{where}{extra}")
    return lines


def record_row(record: Any) -> dict[str, Any]:
    """A registry record as a row of ``ps --json`` (no process stats, no exit history).

    ``Any``: schema's record protocol declares settable attributes, which a frozen
    :class:`~devcluster.registry.Record` does not have (a fix for schema.py)."""
    from devcluster.schema import InstanceInfo

    return InstanceInfo.from_record(record).to_dict()


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def print_instances(rows: Sequence[Mapping[str, Any]], as_json: bool,
                    stream: TextIO | None = None) -> None:
    """``ps``-shaped output: the rows as JSON, or the table."""
    if as_json:
        print_json(list(rows))
        return
    stream = stream or sys.stdout
    print(instances_table(rows, use_colour(stream)), file=stream)


def error_line(message: str) -> None:
    """The one line every mistake gets on stderr (its label red on a terminal)."""
    label = paint("devcluster: error:", "red", use_colour(sys.stderr))
    print(f"{label} {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """A remark on stderr that is not an error (``devcluster: ...``)."""
    print(f"devcluster: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Output:
    """What a command answers: ``data`` for ``--json``, ``text`` for a person.

    ``text`` is a string or a function of "use colour"; ``code`` is the exit status;
    ``error``, when set, is said on stderr after the answer (:func:`error_line`)."""

    data: Any
    text: str | Callable[[bool], str] | None = None
    code: int = 0
    error: str | None = None


def instances(rows: Sequence[Mapping[str, Any]]) -> Output:
    """``ps``-shaped output: the rows, or their table."""
    return Output(list(rows), lambda colour: instances_table(rows, colour))


def render(output: Output | int | None, as_json: bool) -> int:
    """Write a command's answer (streaming commands wrote theirs); its exit status."""
    if not isinstance(output, Output):
        return output or 0
    if as_json:
        print_json(output.data)
    elif output.text is not None:
        text = output.text if isinstance(output.text, str) else output.text(use_colour(sys.stdout))
        if text:
            print(text)
    if output.error is not None:
        sys.stdout.flush()
        error_line(output.error)
    return output.code
