"""``client`` and ``demo``: the balancing client and the narrated story."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Annotated

import typer

from devcluster.cli.app import (
    DEFAULT_PROCFILE,
    ProcfileOpt,
    RegistryOpt,
    StateDirOpt,
    _is_etcd,
    _registry,
    _state_dir,
    app,
    err,
    fail,
    out,
)
from devcluster.cli.targets import GRPC_POLICIES
from devcluster.client.picker import DEFAULT_POLICY, policies_help
from devcluster.errors import NoClusterError, UsageError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM end the loop with its summary, as Ctrl-C does.

    SIGINT is set explicitly: a background job of a non-interactive shell starts with SIGINT
    ignored, and ``kill -INT $client`` in a script would otherwise never reach us."""
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)

#: ``--where KEY=VALUE`` of ``call`` and ``client``.
WhereOpt = Annotated[list[str], typer.Option(
    "--where", metavar="KEY=VALUE", show_default=False,
    help="Only instances whose registry metadata has KEY=VALUE (repeatable: all must "
         "match; see `devcluster meta`).")]


@app.command()
def client(
    service: Annotated[str | None, typer.Option(metavar="SERVICE", help="Service to call (default: every "
                                                     "serving instance).")] = None,
    name: Annotated[str, typer.Option(metavar="NAME", help="Name to greet; calls send NAME-SEQ.")] = "world",
    count: Annotated[int | None, typer.Option("--count", "-n", metavar="N", help="Calls to make "
                                              "(default: until Ctrl-C).")] = None,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between calls.")] = 0.5,
    concurrency: Annotated[int, typer.Option("--concurrency", "-C", metavar="N",
                                             help="Calls in flight.")] = 1,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Deadline of each call, seconds.")] = 2.0,
    policy: Annotated[str | None, typer.Option(
        metavar="POLICY",
        help=f"devcluster's balancer ({DEFAULT_POLICY} by default): {policies_help()}. With a "
             f"grpc --target, grpc's own {' (default) or '.join(GRPC_POLICIES)}.",
        show_default=False)] = None,
    hedge: Annotated[float | None, typer.Option(
        metavar="SECONDS", help="Also send a call unanswered for SECONDS to a second "
        "instance; the first answer wins (a frozen instance then costs no call). For "
        "idempotent methods only (SayHello is).", show_default=False)] = None,
    target: Annotated[str | None, typer.Option(
        metavar="TARGET", help="Call these servers instead of the registry: static:///H:P,H:P,... (a fixed "
             "list, devcluster's balancer, no cluster needed), or a grpc target "
             "(ipv4:H:P,H:P / dns:///H:P / H:P) resolved and balanced by grpc itself.",
        show_default=False)] = None,
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per call, then a "
                                                        "summary object.")] = False,
    registry: RegistryOpt = None,
    where: WhereOpt = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Call SayHello in a loop through the balancing client; print who served each call.

    Ctrl-C or SIGTERM stops it with a summary.

    Example: devcluster client --service server -n 20 --interval 0.1 --hedge 0.1"""
    from devcluster.cli.client_runner import ClientOptions, run_client
    from devcluster.cli.targets import parse_target, resolve_policy
    from devcluster.config.check import parse_where

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
    if parsed is not None:
        if service is not None or state_dir is not None or matching:
            raise UsageError("--service, --where and --state-dir pick instances from a registry; "
                             "--target names the servers itself: pass one or the other")
        if parsed.comma_list:
            err.print(f"devcluster: note: grpc reads {target!r} as one host name and cannot "
                      f"resolve it; a list needs static:///{target} (devcluster's balancer) "
                      f"or ipv4:{target} (grpc's)", markup=False)
    elif _is_etcd(registry):
        directory = _state_dir(procfile, state_dir)
        shared = _registry(procfile, state_dir, registry)
    else:
        directory = _state_dir(procfile, state_dir)
        if not (directory / "registry.json").exists():
            raise NoClusterError(f"no registry in {directory}; start a cluster with "
                                 "`devcluster up` (or pass --state-dir, or --target)")
    opts = ClientOptions(service=service, name=name, count=count, interval=interval,
                         concurrency=concurrency, timeout=timeout, json=json_, policy=policy,
                         state_dir=directory, target=target, hedge=hedge, where=matching,
                         registry=shared if _is_etcd(registry) and parsed is None else None)
    with stop_on_signals():
        summary = run_client(opts, out)
    if count is not None and summary.failures:
        raise typer.Exit(1)


@app.command()
def demo(
    speed: Annotated[float, typer.Option(metavar="X", help="Slow down (0.5 = half speed) for a talk.")] = 1.0,
    lesson: Annotated[bool, typer.Option(
        "--lesson", help="The article's progression instead: one address, the comma list, "
                         "static + pick_first, round_robin, the registry, weights, faults.")]
    = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary table as JSON on "
                                                        "stdout (the story goes to stderr).")]
    = False,
) -> None:
    """The seed article's story in one command: weights, a crash, a freeze, a drain.

    Exits 0 only if every step behaved, so it doubles as a smoke test.

    Example: devcluster demo --speed 0.5"""
    if speed <= 0:
        raise UsageError(f"--speed must be > 0, got {speed}")
    if lesson:
        from devcluster.cli.lesson import run_lesson

        if json_:
            raise UsageError("--json gives the summary of the demo; --lesson has none: "
                             "drop one of them")
        if not run_lesson(out, speed):
            fail("some step did not behave as the article says (see the table above)")
        return
    from devcluster.cli.demo import Demo

    story = Demo(err if json_ else out, speed)
    ok = story.run()
    if json_:
        print(json.dumps([{"step": r.title.strip(), "calls": dict(r.calls),
                           "failed": r.failures, "ok": r.ok} for r in story.results], indent=2))
    if not ok:
        fail("some step did not behave as expected (see the table above)")


