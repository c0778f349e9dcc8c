"""The ``devcluster`` command. Thin: every command is a call of the Python API or of
the control client; this package only parses, prints, and chooses exit codes.

``app`` holds the typer app and the shared options; one module per group of commands
registers its commands on it when imported here."""

from __future__ import annotations

import importlib
import sys

from devcluster.cli.app import app, err
from devcluster.errors import DevclusterError

__all__ = ["app", "main"]

# Commands appear in --help in this order.
for _group in ("cluster", "look", "act", "live", "tools"):
    importlib.import_module(f"devcluster.cli.{_group}")


def main() -> None:
    """Console entry point: one line on stderr and a status for every user mistake."""
    try:
        code = app(standalone_mode=False)
    except DevclusterError as e:
        err.print(f"[red]devcluster: error:[/red] {e}", markup=True)
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
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"[red]devcluster: error:[/red] {e.format_message()}{hint}", markup=True)
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
