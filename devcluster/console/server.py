"""``devcluster console``: a web page and a JSON API on 127.0.0.1, behind a token.

>>> with Console(Path(".devcluster")) as console:        # doctest: +SKIP
...     print(console.url)
http://127.0.0.1:40423/?token=...

The API (every answer is JSON; errors are ``{"error": "..."}``):

- ``GET /api/instances``: the instances, as ``devcluster ps --json`` prints them;
- ``GET /api/traffic``: calls/s, failed/s and p50 per instance from the clients;
- ``POST /api/instances/{name}/{action}``: kill, stop, start, restart, pause, resume,
  enable, disable; answers the instance's row (start/restart do not wait for serving);
- ``POST /api/instances/{name}/weight`` with ``{"weight": N}`` (0..1000);
- ``POST /api/scale`` with ``{"type": T, "count": N}``;
- ``GET /api/events``: server-sent events ``instances`` (on every registry change and
  when a sample changed a row) and ``traffic`` (client statistics, when they change).

aiohttp serves it: one dependency that is both the asyncio HTTP server and the
streaming response SSE needs, with no ASGI server to pick and wire beside it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from devcluster.console.hub import KEEPALIVE, Hub
from devcluster.console.model import ClusterView, UnknownActionError
from devcluster.console.security import Guard, error, new_token
from devcluster.errors import DevclusterError, NoClusterError, UnknownInstanceError, UsageError
from devcluster.registry import Registry

HOST = "127.0.0.1"
#: Request bodies are a few bytes of JSON; refuse anything large.
MAX_BODY = 16 * 1024
_HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
_PAGE: web.AppKey[tuple[bytes, str]] = web.AppKey("page", tuple)


def load_page() -> tuple[bytes, str]:
    """The page, and its Content-Security-Policy (the inline script allowed by hash)."""
    html = resources.files("devcluster").joinpath("data/console.html").read_text("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest())
                      .decode() + "'" for s in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html.encode(), csp


def _status_of(e: DevclusterError) -> int:
    if isinstance(e, UnknownInstanceError | UnknownActionError):
        return 404
    if isinstance(e, UsageError):
        return 400
    if isinstance(e, NoClusterError):
        return 503
    return 409


async def _body(request: web.Request, example: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Answer(400, f"the body must be JSON like {example}") from None
    if not isinstance(body, dict):
        raise _Answer(400, f"the body must be a JSON object like {example}")
    return body


class _Answer(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure as one JSON line with its status (never an HTML page, no traceback)."""
    try:
        return await handler(request)
    except _Answer as e:
        return error(e.status, str(e))
    except DevclusterError as e:
        return error(_status_of(e), str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, f"{e.reason}: {request.method} {request.path}")


# -- handlers -----------------------------------------------------------------------------

async def page(request: web.Request) -> web.StreamResponse:
    html, csp = request.app[_PAGE]
    return web.Response(body=html, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": csp})


async def instances(request: web.Request) -> web.Response:
    view = request.app[_HUB].view
    await asyncio.to_thread(view.refresh)
    return web.json_response(view.rows())


async def traffic(request: web.Request) -> web.Response:
    view = request.app[_HUB].view
    await asyncio.to_thread(view.sample)
    return web.json_response(view.traffic())


async def act(request: web.Request) -> web.Response:
    hub = request.app[_HUB]
    name, action = request.match_info["name"], request.match_info["action"]
    rows = await asyncio.to_thread(hub.view.act, name, action)
    hub.publish()
    hub.want_refresh()
    return web.json_response(rows)


async def weight(request: web.Request) -> web.Response:
    hub = request.app[_HUB]
    body = await _body(request, '{"weight": 5}')
    if "weight" not in body:
        raise _Answer(400, 'the body must name the weight, like {"weight": 5}')
    value = body["weight"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Answer(400, f"weight must be an integer 0..1000, got {json.dumps(value)}")
    row = await asyncio.to_thread(hub.view.set_weight, request.match_info["name"], value)
    hub.publish()
    return web.json_response(row)


async def scale(request: web.Request) -> web.Response:
    hub = request.app[_HUB]
    body = await _body(request, '{"type": "greeter", "count": 3}')
    process_type, count = body.get("type"), body.get("count")
    if process_type is not None and process_type not in hub.view.process_types():
        raise _Answer(404, f"unknown process type {process_type!r}; types: "
                           f"{', '.join(hub.view.process_types())}")
    rows = await asyncio.to_thread(hub.view.scale, process_type, count)
    hub.publish()
    hub.want_refresh()
    return web.json_response(rows)


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[_HUB]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    queue = hub.subscribe()
    try:
        await response.write(b"retry: 1000\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                event = b": keepalive\n\n"
            if event is None:
                break
            await response.write(event)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(queue)
    return response


def make_app(view: ClusterView, guard: Guard) -> web.Application:
    app = web.Application(middlewares=[guard.middleware, _errors], client_max_size=MAX_BODY)
    app[_HUB] = Hub(view)
    app[_PAGE] = load_page()
    app.on_response_prepare.append(guard.on_prepare)
    app.router.add_get("/", page)
    app.router.add_get("/api/instances", instances)
    app.router.add_get("/api/traffic", traffic)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/instances/{name}/weight", weight)
    app.router.add_post("/api/instances/{name}/{action}", act)
    app.router.add_post("/api/scale", scale)
    return app


class Console:
    """The console server, run by its own event loop in a daemon thread.

    ``port=0`` takes a free port; the URL (with the token) is in :attr:`url` once
    :meth:`start` returned. Binds 127.0.0.1 only.
    """

    def __init__(self, state_dir: Path, registry: str | Registry | None = None, *,
                 port: int = 0, token: str | None = None) -> None:
        self.view = ClusterView(state_dir, registry)
        self.token = token or new_token()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((HOST, port))
        except OSError as e:
            self._sock.close()
            self.view.close()
            raise UsageError(f"cannot listen on {HOST}:{port} ({e.strerror}); pick another "
                             "--port or leave it out for a free one") from None
        self.port: int = self._sock.getsockname()[1]
        self.guard = Guard(self.token, self.port)
        self.app = make_app(self.view, self.guard)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="devcluster-console", daemon=True)

    def __repr__(self) -> str:
        return f"<Console {HOST}:{self.port} {self.view.state_dir}>"

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """Where to point a browser: the page, with the access token."""
        return f"{self.origin}/?token={self.token}"

    @property
    def hub(self) -> Hub:
        return self.app[_HUB]

    def start(self, timeout: float = 30.0) -> str:
        """Serve in the background; return :attr:`url` once it accepts connections."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DevclusterError(f"the console did not start within {timeout:g} s")
        if self._failed is not None:
            raise DevclusterError(f"the console could not start: {self._failed}") \
                from self._failed
        return self.url

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:
            self._failed = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await self.hub.start()
            await web.SockSite(runner, self._sock).start()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await self.hub.stop()
            await runner.cleanup()

    def stop(self) -> None:
        """Stop serving, end every open stream and close the registry (idempotent)."""
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()
        self.view.close()

    def __enter__(self) -> Console:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
