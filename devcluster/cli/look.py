"""``ps``, ``logs`` and ``registry``: looking at a cluster."""

from __future__ import annotations

from devcluster.cli import views
from devcluster.cli.interrupt import stop_on_signals
from devcluster.cli.place import Place
from devcluster.errors import UsageError


def ps(at: Place, as_json: bool) -> views.Output:
    """The supervisor's view through its control socket, live stats included; with an
    etcd registry, every instance of every supervisor registered there."""
    if at.is_etcd:
        snap = at.registry().snapshot()
        return views.instances([views.record_row(r) for r in snap.records.values()])
    from devcluster.control.client import ControlClient, as_dict

    with ControlClient(at.state_dir) as control:
        return views.instances([as_dict(i) for i in control.ps().instances])


def logs(at: Place, name: str | None, follow: bool, lines: int, as_json: bool) -> None:
    """The last ``lines`` lines of a log, then (``follow``) new ones until interrupted."""
    if lines < 0:
        raise UsageError(f"--lines must be 0 or more, got {lines}")
    from devcluster.cli.logview import show_logs

    with stop_on_signals():
        show_logs(at.state_dir, name, follow, lines, as_json=as_json)


def registry(at: Place, as_json: bool) -> views.Output:
    """The raw records, as stored."""
    reg = at.registry()
    try:
        snap = reg.snapshot()
    finally:
        reg.close()
    from devcluster.defaults import registry_url

    # The file's path, or the etcd URL (given, or from $DEVCLUSTER_REGISTRY).
    where = str(getattr(reg, "path", None) or registry_url(at.registry_url))
    records = list(snap.records.values())
    return views.Output(
        {"revision": snap.revision, "instances": {r.name: r.to_dict() for r in records}},
        lambda colour: views.records_table(f"{where} (revision {snap.revision})", records, colour))


def xds(at: Place, as_json: bool) -> views.Output:
    """How to point any gRPC client at the cluster: the bootstrap, the server, the listeners."""
    from devcluster.xds.bootstrap import running_setup

    reg = at.registry()
    try:
        setup = running_setup(at.state_dir, reg)
    finally:
        reg.close()
    return views.Output(setup.to_dict(), setup.exports())
