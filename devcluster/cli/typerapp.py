"""The ``devcluster`` command. Thin: every command is a call of the Python API or of
the control client; this package only parses, prints, and chooses exit codes.

``app`` holds the typer app and the shared options; one module per group of commands
registers its commands on it when imported here."""

from __future__ import annotations

import importlib
import sys

from devcluster.cli.app import app, error_line
from devcluster.errors import DevclusterError

__all__ = ["app", "main"]

# Commands appear in --help in this order.
for _group in ("cluster", "look", "events", "act", "reload", "live", "tools", "call"):
    importlib.import_module(f"devcluster.cli.{_group}")


def _usage_hint(e: Exception) -> str:
    """What to do instead, for a command line click refused."""
    if getattr(e, "option_name", None) == "-f":
        return (" (-f FILE goes before the command, as in docker compose: "
                "`devcluster -f FILE up`; after it, use --procfile FILE)")
    ctx = getattr(e, "ctx", None)
    return f" (see `{ctx.command_path} --help`)" if ctx is not None else ""


def main() -> None:
    """Console entry point: one line on stderr and a status for every user mistake.

    Exit status: 0 done; 1 the world disagrees (no cluster, no such instance, a timeout);
    2 the command line is wrong (unknown flag, bad value, bad file); 130 interrupted."""
    try:
        code = app(standalone_mode=False)
    except DevclusterError as e:
        error_line(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:
        # typer's click (vendored or not) raises these; match by shape, not import path.
        if type(e).__name__ == "Abort":
            sys.exit(130)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            error_line(f"{e.format_message()}{_usage_hint(e)}")
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
