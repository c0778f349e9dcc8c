"""The console in a real browser: Debian's headless Chromium, driven by Playwright.

Never a downloaded browser (``playwright install`` cannot work here): Playwright
launches ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` does).
The test takes a screenshot; with ``DEVCLUSTER_UPDATE_SCREENSHOT=1`` it replaces the
one the README shows (``docs/console.png``), else it goes to the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devcluster.api import Cluster
from devcluster.console import Console

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
GREETER = "python -m devcluster.greeter --port $PORT"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright missing: pip install -e '.[test]'")


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 700})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


class Caller:
    """A balancing client in a thread, publishing its statistics like any channel."""

    def __init__(self, cluster: Cluster) -> None:
        from devcluster.client.stats import StatsPublisher

        self.cluster = cluster
        self.stats = StatsPublisher(cluster.state_dir, label="browser test")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from devcluster._proto.helloworld_pb2 import HelloRequest
        from devcluster._proto.helloworld_pb2_grpc import GreeterStub
        from devcluster.client import BalancedChannel

        with BalancedChannel(None, self.cluster.registry, on_call=self.stats.on_call,
                             retry_on=()) as channel:
            stub = GreeterStub(channel)
            while not self.stop.wait(0.004):
                # A call the killed instance was running fails: counted, not raised.
                with contextlib.suppress(grpc.RpcError):
                    stub.SayHello(HelloRequest(name="browser"), timeout=2)

    def __enter__(self) -> Caller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.stats.close()


def test_console_in_chromium(make_cluster: Callable[..., Cluster], browser_page: Any,
                             wait_until: Any, tmp_path: Path) -> None:
    cluster = make_cluster([f"server{i}: {GREETER}" for i in (1, 2, 3)])
    page = browser_page
    with Console(cluster.state_dir) as console:
        # 1. the page shows the instances, live
        page.goto(console.url)
        for name in ("server1", "server2", "server3"):
            page.wait_for_selector(f'tr[data-name="{name}"][data-state="serving"]')
        assert page.inner_text("#conn") == "live"
        # the token went to an HttpOnly cookie scoped to the page's random path
        assert page.url == console.page_url and "token" not in page.url
        assert page.evaluate("document.cookie") == ""

        # 2. a weight typed in the page reaches the registry (and comes back over SSE)
        page.fill('tr[data-name="server1"] .weight-input', "5")
        page.click('tr[data-name="server1"] .weight-set')
        wait_until(lambda: cluster.registry.get("server1").weight == 5, 10, "weight 5")
        page.wait_for_selector('tr[data-name="server1"][data-weight="5"]')
        # 2b. a fault set from the command line's API shows in the page, and goes
        with cluster.fault("server2", delay="1ms:1"):
            page.wait_for_function("() => document.querySelector('tr[data-name=\"server2\"] "
                                   ".state').textContent.includes('(fault: delay 1ms 1%)')")
        page.wait_for_function("() => !document.querySelector('tr[data-name=\"server2\"] "
                               ".state').textContent.includes('fault')")

        # 4. the chart moves while a client runs: server1 takes 5/7 of the calls
        with Caller(cluster):
            page.wait_for_function(
                "() => samples.length >= 3 && samples[samples.length - 1].v.server1 > 0")
            first = page.get_attribute('#chart polyline[data-name="server1"]', "points")
            page.wait_for_function(
                "() => samples.filter(s => (s.v.server1 || 0) > 0).length >= 8")
            assert page.get_attribute('#chart polyline[data-name="server1"]', "points") \
                != first
            shares = page.evaluate("() => { const v = samples[samples.length - 1].v;"
                                   " const t = v.server1 + v.server2 + v.server3;"
                                   " return v.server1 / t; }")
            assert 0.6 < shares < 0.8, f"server1's share of the calls: {shares:.2f}"
            legend = page.inner_text('#legend [data-name="server1"] .legend-value')
            assert float(legend.removesuffix("/s")) > 0

            # 3. kill from the page (it asks first) and see the state change
            page.once("dialog", lambda dialog: dialog.accept())
            page.click('tr[data-name="server3"] button[data-action="kill"]')
            wait_until(lambda: cluster.instance("server3").state == "killed", 10, "killed")
            page.wait_for_selector('tr[data-name="server3"][data-state="killed"]')
            page.wait_for_function(
                "() => samples.slice(-2).every(s => !(s.v.server3 > 0))", timeout=15_000)
            shot = SCREENSHOT if os.environ.get("DEVCLUSTER_UPDATE_SCREENSHOT") == "1" \
                else tmp_path / "console.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        assert "error" not in page.inner_text("#message").lower()


class Eavesdropper(http.server.ThreadingHTTPServer):
    """Another server on 127.0.0.1 (another port): records the cookies it is sent."""

    def __init__(self) -> None:
        self.cookies: list[tuple[str, str]] = []  # (path, Cookie header)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.cookies.append((self.path, self.headers.get("Cookie", "")))
                body = b"<html><body>another server</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> Eavesdropper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(10)


def test_the_token_cookie_goes_to_no_other_port(make_cluster: Callable[..., Cluster],
                                                browser_page: Any) -> None:
    """Cookies are per host, not per port: a cookie of the console's would go to every
    server on 127.0.0.1, unless scoped to a path only the console's page uses."""
    cluster = make_cluster()
    page = browser_page
    with Console(cluster.state_dir) as console, Eavesdropper() as other:
        page.goto(console.url)
        page.wait_for_selector('tr[data-name="greeter"][data-state="serving"]')
        other_port = other.server_address[1]
        for path in ("/", "/api/instances", "/c/", "/?token=x"):
            page.goto(f"http://127.0.0.1:{other_port}{path}")
            page.wait_for_selector("text=another server")
        assert {p for p, _ in other.cookies} >= {"/", "/api/instances", "/c/", "/?token=x"}
        assert not [c for _, c in other.cookies if "devcluster-console" in c], other.cookies
        # ... while the console's page still has it (reloaded without the token).
        page.goto(console.page_url)
        page.wait_for_selector('tr[data-name="greeter"][data-state="serving"]')


def test_the_page_scales_a_type_to_zero_and_back(make_cluster: Callable[..., Cluster],
                                                 browser_page: Any, wait_until: Any) -> None:
    cluster = make_cluster()
    page = browser_page
    with Console(cluster.state_dir) as console:
        page.goto(console.url)
        page.wait_for_selector('tr[data-name="greeter"][data-state="serving"]')
        scale = 'label[data-type="greeter"]'
        page.fill(f"{scale} input", "0")
        page.click(f"{scale} button")
        wait_until(lambda: cluster.ps() == [], 20, "greeter scaled to 0")
        page.wait_for_selector('tr[data-name="greeter"]', state="detached")
        # A fresh page still offers the type: the console remembers it.
        page.reload()
        page.wait_for_function("() => types.includes('greeter')")
        page.fill(f"{scale} input", "1")
        page.click(f"{scale} button")
        wait_until(lambda: [r.state for r in cluster.ps()] == ["serving"], 20,
                   "greeter scaled back to 1")
        # (named greeter.1 now: a type scaled from 0 numbers its instances)
        page.wait_for_selector('tr[data-name^="greeter"][data-state="serving"]')
        assert "error" not in page.inner_text("#message").lower()
