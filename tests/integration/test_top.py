"""``devcluster top`` driven by textual's pilot: keys pressed in the TUI change the real cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from devcluster.api import Cluster
from devcluster.console.model import ClusterView
from devcluster.tui.top import Confirm, TopApp

GREETER = "python -m devcluster.greeter --port $PORT"


async def until(pilot: Any, predicate: Callable[[], Any], what: str, timeout: float = 15) -> None:
    """Let the app run until ``predicate`` holds (a key's effect lands in another process)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.05)


def cell(app: TopApp, name: str, column: str) -> str:
    from textual.widgets import DataTable

    return str(app.query_one(DataTable).get_cell(name, column))


def test_keys_act_on_the_real_cluster(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster([f"server1: {GREETER}", f"server2: {GREETER}"])
    view = ClusterView(cluster.state_dir)

    def state(name: str) -> str:
        return cluster.instance(name).state

    async def scenario() -> None:
        app = TopApp(view, tick=0.2)
        async with app.run_test(size=(170, 20)) as pilot:
            await until(pilot, lambda: cell(app, "server2", "state") == "serving", "two rows")
            # weight: + and - on the row under the cursor (server1)
            await pilot.press("plus")
            await until(pilot, lambda: cluster.registry.get("server1").weight == 2, "weight 2")
            await pilot.press("minus", "minus")
            await until(pilot, lambda: cluster.registry.get("server1").weight == 0, "weight 0")
            await until(pilot, lambda: cell(app, "server1", "weight") == "0", "weight 0 shown")
            # disable asks first; enable does not
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
            await pilot.press("y")
            await until(pilot, lambda: not cluster.registry.get("server1").enabled, "disabled")
            await pilot.press("d")
            await until(pilot, lambda: cluster.registry.get("server1").enabled, "enabled")
            # kill: "n" leaves it alone, "y" kills; s starts it again without asking
            await pilot.press("k")
            await until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
            await pilot.press("n")
            await pilot.pause(0.3)
            assert state("server1") == "serving"
            await pilot.press("k", "y")
            await until(pilot, lambda: state("server1") == "killed", "server1 killed")
            await until(pilot, lambda: cell(app, "server1", "state") == "killed", "shown")
            await pilot.press("s")
            await until(pilot, lambda: state("server1") == "serving", "server1 started")
            # server2: pause asks, resume does not; restart asks
            await pilot.press("down", "p", "y")
            await until(pilot, lambda: state("server2") == "paused", "server2 paused")
            await until(pilot, lambda: cell(app, "server2", "state") == "paused", "shown")
            await pilot.press("p")
            await until(pilot, lambda: state("server2") == "serving", "server2 resumed")
            await pilot.press("r", "y")
            await until(pilot, lambda: cluster.instance("server2").restarts == 1
                        and state("server2") == "serving", "server2 restarted")
            # a change made elsewhere shows at once
            cluster.weight("server2", 7)
            started = time.monotonic()
            await until(pilot, lambda: cell(app, "server2", "weight") == "7", "weight 7", 2)
            assert time.monotonic() - started < 1.0
            await pilot.press("q")
        assert app.return_code in (None, 0)

    try:
        asyncio.run(scenario())
    finally:
        view.close()


def test_calls_per_second_and_share_bar(make_cluster: Callable[..., Cluster]) -> None:
    from devcluster._proto.helloworld_pb2 import HelloRequest
    from devcluster._proto.helloworld_pb2_grpc import GreeterStub
    from devcluster.client import BalancedChannel
    from devcluster.client.stats import StatsPublisher

    cluster = make_cluster([f"server1: {GREETER}", f"server2: {GREETER}"])
    cluster.weight("server1", 3)
    view = ClusterView(cluster.state_dir)

    async def scenario() -> None:
        app = TopApp(view, tick=0.2)
        with StatsPublisher(cluster.state_dir, interval=0.2) as stats, \
                BalancedChannel(None, cluster.registry, on_call=stats.on_call) as channel:
            stub = GreeterStub(channel)
            async with app.run_test(size=(170, 20)) as pilot:
                deadline = time.monotonic() + 15
                while float(cell(app, "server2", "calls")) <= 0:
                    assert time.monotonic() < deadline, "no calls/s shown"
                    for _ in range(20):
                        stub.SayHello(HelloRequest(name="top"), timeout=5)
                    await pilot.pause(0.02)
                one = float(cell(app, "server1", "calls"))
                two = float(cell(app, "server2", "calls"))
                assert one > two > 0
                assert cell(app, "server1", "share").count("█") > \
                    cell(app, "server2", "share").count("█")

    try:
        asyncio.run(scenario())
    finally:
        view.close()
