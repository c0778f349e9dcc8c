"""The verbs that change instances: kill/stop/start/restart/pause/resume and scale
(through the supervisor's control socket), weight, enable and disable (registry writes,
no supervisor needed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from devcluster.cli import views
from devcluster.cli.place import Place
from devcluster.errors import UnknownInstanceError, UsageError

#: The verbs that wait for their change unless --no-wait.
WAITING = frozenset({"start", "restart"})


def verb(at: Place, verb: str, names: Sequence[str], all_: bool, as_json: bool,
         no_wait: bool = False, signal: str | None = None) -> views.Output:
    """A verb of the control plane on instances or process types (or ``--all``)."""
    if not names and not all_:
        raise UsageError(f"name an instance or process type to {verb}, or pass --all")
    kw: dict[str, Any] = {"wait": verb in WAITING and not no_wait}
    if signal is not None:
        from devcluster.config.signals import parse_signal

        parse_signal(signal)
        kw = {"signal": signal}
    from devcluster.control.client import ControlClient, as_dict

    with ControlClient(at.state_dir) as control:
        reply = control.act(verb, list(names), all_=all_, **kw)
    rows = [as_dict(i) for i in reply.instances]
    unchanged = list(reply.unchanged)
    text = "\n".join(views.action_lines(rows, unchanged))
    return _checked(at, views.Output(rows, text), verb if kw.get("wait") else None)


def _checked(at: Place, output: views.Output, verb: str | None) -> views.Output:
    """``output``, exit 1 with one error line when the waited-for ``verb`` left an
    instance not serving (``--json`` too: a script must not go ahead on it)."""
    if verb is None:
        return output
    from devcluster.errors import NotReadyError
    from devcluster.serving import require_serving

    try:
        require_serving(at.state_dir, output.data, verb)
    except NotReadyError as e:
        return dataclasses.replace(output, code=e.exit_code, error=str(e))
    return output


def scale(at: Place, counts: Sequence[str], no_wait: bool, as_json: bool) -> views.Output:
    """Grow or shrink process types; the instances after."""
    from devcluster.config.procfile import parse_scale
    from devcluster.control.client import ControlClient, as_dict

    wanted = parse_scale(list(counts))
    with ControlClient(at.state_dir) as control:
        reply = control.scale(wanted, wait=not no_wait)
    return _checked(at, views.instances([as_dict(i) for i in reply.instances]),
                    None if no_wait else "scale")


def weight(at: Place, name: str, value: str, as_json: bool) -> views.Output:
    """Set a weight in the registry (a bad value is said before the registry is read)."""
    from devcluster.registry.record import parse_weight

    w = parse_weight(value)
    return _write(at, name, {"weight": w}, f"weight {w}")


def enable(at: Place, verb: str, name: str, as_json: bool) -> views.Output:
    """``enable`` or ``disable``: in rotation or out of it."""
    return _write(at, name, {"enabled": verb == "enable"}, f"{verb}d")


def fault(at: Place, target: str, delay: str | None, abort: str | None, clear: bool,
          as_json: bool) -> views.Output:
    """Set (or ``--clear``) a fault on an instance, a process type or a service."""
    from devcluster.config.procfile import check_name
    from devcluster.registry.faults import parse
    from devcluster.registry.faultset import set_fault

    check_name(target)
    if clear and (delay is not None or abort is not None):
        raise UsageError("fault: --clear takes no --delay or --abort (say one or the other)")
    wanted = None if clear else parse(target, delay, abort)
    said = "fault cleared" if wanted is None else f"fault {wanted.describe()}"
    reg = at.registry()
    try:
        records = set_fault(reg, target, wanted)
    finally:
        reg.close()
    return views.Output([r.to_dict() for r in records],
                        "\n".join(f"{r.name}: {said}" for r in records))


def _write(at: Place, name: str, change: Mapping[str, Any], said: str) -> views.Output:
    """Apply ``change`` to an instance, or to every instance of a type; the records after."""
    from devcluster.config.procfile import check_name

    check_name(name)
    reg = at.registry()
    try:
        snap = reg.snapshot()
        if name in snap.records:
            names = [name]
        else:
            names = [r.name for r in snap.records.values() if r.name.split(".")[0] == name]
            if not names:
                raise UnknownInstanceError(name, list(snap.records))
        records = reg.update_many({n: dict(change) for n in names}).records
    finally:
        reg.close()
    return views.Output([records[n].to_dict() for n in names if n in records],
                        "\n".join(f"{n}: {said}" for n in names))
