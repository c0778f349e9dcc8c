"""Write the reference (``docs/reference/*.md``) from the code, so it cannot drift.

``python -m devcluster._docs`` rewrites the pages; ``--check`` only says which differ
(exit 1), as ``tests/test_reference_fresh.py`` does. Each page comes from the one place
that owns its facts:

* commands and flags: the argparse parsers of :mod:`devcluster.cli.spec`;
* ``devcluster.toml``: the key table :mod:`devcluster.config.keys`, which
  :mod:`devcluster.config.project` validates against;
* the instance schema and the states: :class:`devcluster.schema.InstanceInfo` and
  :class:`devcluster.registry.State`, their attribute docstrings;
* the exit statuses: :mod:`devcluster.cli.runner`'s docstring and the error classes;
* the state dir: :mod:`devcluster.statedir`'s docstring table.

Nothing imports this module: the command line never pays for it.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from devcluster import errors, statedir
from devcluster.cli import runner, spec
from devcluster.config import keys, project
from devcluster.registry.record import State
from devcluster.schema import InstanceInfo

#: Where the pages go in a checkout of the repository.
REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"
GENERATED = "<!-- Written by `python -m devcluster._docs` from the code; do not edit by hand. -->"
_WIDTH = 88  # usage lines are wrapped at this width, whatever the terminal


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the attributes of ``cls`` (PEP 257's), by name."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))  # type: ignore[arg-type]
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    found: dict[str, str] = {}
    for stmt, after in zip(node.body, node.body[1:], strict=False):
        target = (stmt.target if isinstance(stmt, ast.AnnAssign)
                  else stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
        if (isinstance(target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            found[target.id] = one_line(after.value.value)
    return found


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces as single spaces."""
    return " ".join(text.split())


def cell(text: str) -> str:
    """``text`` fit for a markdown table cell."""
    return one_line(text).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def rst_to_md(text: str) -> str:
    """Sphinx roles and double backquotes as markdown code: ``:func:`x``` -> `` `x` ``."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


# -- commands ------------------------------------------------------------------------

def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def option_row(action: argparse.Action) -> list[str]:
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        value = ""
    elif action.choices:
        value = " \\| ".join(f"`{c}`" for c in action.choices)
    else:
        value = f"`{action.metavar or action.dest.upper()}`"
        value += " ..." if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction) else ""
    default = action.default
    shown = "" if default in (None, False, [], argparse.SUPPRESS) else f"`{default}`"
    return [names, value, shown, action.help or ""]


def command_section(command: spec.Command) -> list[str]:
    parser = spec.build(command)
    lines = [f"## `devcluster {command.name}`", "", rst_to_md(one_line(command.summary)), ""]
    if command.body:
        lines += [one_line(command.body), ""]
    lines += ["```text", usage(parser), "```", ""]
    lines += table(("option", "value", "default", "what it does"),
                   (option_row(a) for a in parser._actions))
    return [*lines, "", f"Example: `{command.example}`", ""]


def commands_page() -> str:
    lines = ["# Commands", "", GENERATED, "",
             "Every command with its flags, from the parser itself (`devcluster.cli.spec`). "
             "`devcluster COMMAND --help` prints the same.", "",
             "```text", spec.top_help(), "```", ""]
    for command in spec.COMMANDS.values():
        lines += command_section(command)
    return "\n".join(lines)


# -- devcluster.toml -----------------------------------------------------------------

def config_page() -> str:
    example = (project.__doc__ or "").split("::\n", 1)[1].split("\n\nEvery mistake", 1)[0]
    lines = ["# devcluster.toml", "", GENERATED, "",
             "Optional, beside the Procfile (or `up --config FILE`): settings per process type "
             "and for the cluster. Flags win over the file, the file over the defaults. "
             "An unknown key, a value of the wrong type or out of range is one line naming "
             "the file, the line and the key (exit 2), and nothing starts.", "",
             "```toml", inspect.cleandoc(example), "```", ""]
    for name in dict.fromkeys(k.table for k in keys.KEYS):
        rows = ([f"`{k.name}`", k.type, k.default, k.meaning] for k in keys.KEYS if k.table == name)
        lines += [f"## `[{name}]`", "", *table(("key", "type", "default", "meaning"), rows), ""]
    return "\n".join(lines)


# -- instances, states, exit statuses, the state dir ---------------------------------

def json_type(annotation: str) -> str:
    words = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
             "dict[str, str]": "object", "None": "null"}
    return " or ".join(words.get(part.strip(), part.strip()) for part in annotation.split("|"))


def instances_page() -> str:
    docs, states = attribute_docs(InstanceInfo), attribute_docs(State)
    rows = ([f"`{f.name}`", json_type(str(f.type)),
             re.sub(r"\bNone\b", "`null`", rst_to_md(docs.get(f.name, "")))]
            for f in fields(InstanceInfo))
    return "\n".join([
        "# Instances and states", "", GENERATED, "",
        "## The instance object (`ps --json`)", "",
        "Every path that shows an instance gives this JSON object "
        "(`devcluster.schema.InstanceInfo`), keys always present, in this order. "
        "A value not known on a path is `null`, never a placeholder.", "",
        *table(("key", "type", "meaning"), rows), "",
        "## States", "",
        "An instance's `state` (`devcluster.registry.State`).", "",
        *table(("state", "meaning"), ([f"`{s.value}`", rst_to_md(states[s.name])] for s in State)),
        ""])


def exit_statuses() -> list[tuple[str, str]]:
    """(status, meaning) from the runner's docstring: ``Exit status: 0 done; 1 ...``."""
    text = (runner.__doc__ or "").split("Exit status:", 1)[1].split(". A", 1)[0]
    return [(m.split(" ", 1)[0], m.split(" ", 1)[1]) for m in
            (one_line(item) for item in re.split(r";\s+(?=\d)", text))]


def exit_status_page() -> str:
    classes = sorted((c for c in vars(errors).values() if isinstance(c, type)
                      and issubclass(c, errors.DevclusterError)), key=lambda c: (c.exit_code, c.__name__))
    rows = ([f"`{c.__name__}`", str(c.exit_code), rst_to_md((c.__doc__ or "").split("\n\n")[0])]
            for c in classes)
    return "\n".join([
        "# Exit statuses", "", GENERATED, "",
        *table(("status", "meaning"), ([f"`{s}`", m] for s, m in exit_statuses())), "",
        "A mistake is one line on stderr naming the problem and the fix, never a traceback. "
        "The errors of the Python API (`devcluster.errors`) and the status each gives:", "",
        *table(("error", "exit", "when"), rows), ""])


def state_dir_page() -> str:
    doc = statedir.__doc__ or ""
    intro = rst_to_md(doc.split("\n\n")[1])
    rows = [line for line in doc.splitlines() if line.startswith("|")]
    return "\n".join(["# The state dir", "", GENERATED, "", one_line(intro), "",
                      "Every file, its format and its version (`devcluster.statedir`):", "",
                      *rows, ""])


# -- the pages -------------------------------------------------------------------------

PAGES: dict[str, tuple[str, Callable[[], str]]] = {
    "commands.md": ("Commands", commands_page),
    "config.md": ("devcluster.toml", config_page),
    "instances.md": ("Instances and states", instances_page),
    "exit-status.md": ("Exit statuses", exit_status_page),
    "state-dir.md": ("The state dir", state_dir_page),
}


def index_page() -> str:
    listed = [f"- [{title}]({name})" for name, (title, _) in PAGES.items()]
    return "\n".join(["# Reference", "", GENERATED, "",
                      "Generated from the code by `python -m devcluster._docs`; a test fails "
                      "when these pages and the code disagree.", "", *listed, ""])


def render() -> dict[str, str]:
    """Every page of the reference, by file name."""
    return {"index.md": index_page(), **{name: make() for name, (_, make) in PAGES.items()}}


def stale(out: Path) -> list[str]:
    """The pages of ``out`` that differ from what :func:`render` writes."""
    return [name for name, text in render().items()
            if not (out / name).is_file() or (out / name).read_text() != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster._docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REFERENCE, help="Directory of the pages.")
    parser.add_argument("--check", action="store_true", help="Only list stale pages (exit 1).")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        for name in names:
            print(f"{args.out / name} is stale: run `python -m devcluster._docs`", file=sys.stderr)
        return 1 if names else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
