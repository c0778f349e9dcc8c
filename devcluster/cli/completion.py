"""Shell completion: ``devcluster --show-completion [SHELL]`` prints the script,
``devcluster --install-completion [SHELL]`` installs it (what typer offered, README).

The script is static, written from :data:`devcluster.cli.spec.COMMANDS` when asked: it
completes command names, the options before the command, and each command's options;
anything else falls back to file names. Static means a TAB costs the shell nothing:
no Python starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from devcluster.cli import spec
from devcluster.errors import UsageError

SHELLS = ("bash", "zsh", "fish")
_GLOBAL = ("-f", "--file", "--procfile", "-V", "--version", "-h", "--help",
           "--show-completion", "--install-completion")


def shell_of(name: str | None) -> str:
    """The shell asked for, else $SHELL's; UsageError for one we cannot complete in."""
    shell = name or Path(os.environ.get("SHELL") or "bash").name
    if shell not in SHELLS:
        raise UsageError(f"no completion for shell {shell!r}; choose one of: {', '.join(SHELLS)}")
    return shell


def options() -> dict[str, list[str]]:
    """Every command's option strings (each command's parser, built for this only)."""
    found: dict[str, list[str]] = {}
    for name, command in spec.COMMANDS.items():
        parser = spec.build(command)
        found[name] = [s for action in parser._actions for s in action.option_strings]
    return found


def _bash() -> str:
    cases = "\n".join(f'        {name}) opts="{" ".join(opts)}";;'
                      for name, opts in options().items())
    return f"""# devcluster completion for bash (devcluster --show-completion bash)
_devcluster_completion() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" opts="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -f|--file|--procfile) ((i++));;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break;;
        esac
    done
    case "$cmd" in
        "") if [[ "$cur" == -* ]]; then opts="{" ".join(_GLOBAL)}"
            else opts="{" ".join(spec.COMMANDS)}"; fi;;
{cases}
    esac
    if [[ -z "$cmd" || "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    fi
}}
complete -o default -F _devcluster_completion devcluster
"""


def _fish() -> str:
    lines = ["# devcluster completion for fish (devcluster --show-completion fish)"]
    for name, command in spec.COMMANDS.items():
        lines.append(f"complete -c devcluster -n '__fish_use_subcommand' -a {name} "
                     f"-d {_fish_quote(command.summary.splitlines()[0])}")
    for name, opts in options().items():
        for opt in opts:
            flag = f"-l {opt[2:]}" if opt.startswith("--") else f"-s {opt[1:]}"
            lines.append(f"complete -c devcluster -n '__fish_seen_subcommand_from {name}' {flag}")
    return "\n".join(lines) + "\n"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def script(shell: str) -> str:
    """The completion script for ``shell``."""
    if shell == "fish":
        return _fish()
    if shell == "zsh":  # zsh runs the bash script through its bashcompinit
        return ("# devcluster completion for zsh (devcluster --show-completion zsh)\n"
                "autoload -U +X compinit && compinit\n"
                "autoload -U +X bashcompinit && bashcompinit\n" + _bash())
    return _bash()


def install(shell: str) -> str:
    """Write the script where the shell finds it; what was done, in one line."""
    home = Path.home()
    if shell == "fish":
        target = home / ".config" / "fish" / "completions" / "devcluster.fish"
        rc = None
    else:
        target = home / f".{shell}_completions" / "devcluster.sh"
        rc = home / f".{shell}rc"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(script(shell))
    if rc is not None:
        line = f"source {target}"
        text = rc.read_text() if rc.exists() else ""
        if line not in text.splitlines():
            with rc.open("a") as f:
                f.write(f"{'' if text.endswith(chr(10)) or not text else chr(10)}{line}\n")
    return f"{shell} completion installed in {target}; open a new shell to use it"
