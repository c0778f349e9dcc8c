"""``client`` and ``demo``: the balancing client and the narrated story.

Both write to a :class:`~devcluster.cli.views.Terminal` (per-call lines, closing tables):
the one output stack of every command."""

from __future__ import annotations

from devcluster.cli import views
from devcluster.cli.interrupt import stop_on_signals
from devcluster.cli.place import Place
from devcluster.cli.views import terminal
from devcluster.errors import DevclusterError, UsageError


def client(at: Place, service: str | None, name: str, count: int | None, interval: float,
           concurrency: int, timeout: float, policy: str | None, hedge: float | None,
           target: str | None, as_json: bool, where: list[str], xds: bool = False) -> int:
    """Call SayHello in a loop; exit 1 if a counted run had failures."""
    from devcluster.cli.client_runner import ClientOptions, run_client
    from devcluster.cli.targets import parse_target, resolve_policy
    from devcluster.config.check import parse_where

    if xds:  # first: its line names the option that clashes, whatever else is wrong
        from devcluster.cli.xds_channel import check_options

        check_options(policy, hedge, where, target)
    matching = parse_where(where)
    # A bad target or policy is a usage error before anything starts.
    parsed = parse_target(target) if target is not None else None
    resolve_policy(parsed, policy)
    if (count is not None and count < 0) or interval < 0 or timeout <= 0 or concurrency < 1:
        raise UsageError("--count and --interval must be >= 0, --timeout > 0, "
                         "--concurrency >= 1")
    if hedge is not None and (hedge <= 0 or (parsed is not None and parsed.kind == "grpc")):
        raise UsageError(f"--hedge must be > 0 seconds, got {hedge}" if hedge <= 0 else
                         "--hedge needs devcluster's balancer: drop it, or use --target "
                         "static:///HOST:PORT,... instead of a grpc target")
    directory = None
    shared = None
    if parsed is not None:
        if service is not None or at.state_dir_given or matching:
            raise UsageError("--service, --where and --state-dir pick instances from a registry; "
                             "--target names the servers itself: pass one or the other")
        if parsed.comma_list:
            views.note(f"note: grpc reads {target!r} as one host name and cannot resolve it; "
                       f"a list needs static:///{target} (devcluster's balancer) or "
                       f"ipv4:{target} (grpc's)")
    else:
        at.require_registry("or pass --state-dir, or --target")
        directory = at.state_dir
        shared = at.registry() if at.is_etcd else None
    opts = ClientOptions(service=service, name=name, count=count, interval=interval,
                         concurrency=concurrency, timeout=timeout, json=as_json, policy=policy,
                         state_dir=directory, target=target, hedge=hedge, where=matching,
                         registry=shared, xds=xds)
    with stop_on_signals():
        summary = run_client(opts, terminal())
    return 1 if count is not None and summary.failures else 0


def demo(speed: float, lesson: bool, as_json: bool) -> int:
    """The story (or ``--lesson``); exit 1 unless every step behaved."""
    if speed <= 0:
        raise UsageError(f"--speed must be > 0, got {speed}")
    if lesson:
        if as_json:
            raise UsageError("--json gives the summary of the demo; --lesson has none: "
                             "drop one of them")
        from devcluster.cli.lesson import run_lesson

        if not run_lesson(terminal(), speed):
            raise DevclusterError("some step did not behave as the article says "
                                  "(see the table above)")
        return 0
    from devcluster.cli.demo import Demo

    story = Demo(terminal(stderr=as_json), speed)
    ok = story.run()
    if as_json:
        views.print_json([{"step": r.title.strip(), "calls": dict(r.calls),
                           "failed": r.failures, "ok": r.ok} for r in story.results])
    if not ok:
        raise DevclusterError("some step did not behave as expected (see the table above)")
    return 0
