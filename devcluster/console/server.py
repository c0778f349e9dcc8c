"""``devcluster console``: a web page and a JSON API on 127.0.0.1, behind a token.

>>> with Console(Path(".devcluster")) as console:        # doctest: +SKIP
...     print(console.url)
http://127.0.0.1:40423/?token=...

The printed URL redirects to the page, at a random path with its cookie (see
:mod:`devcluster.console.security`); the page calls the API under that path. Scripts
call it at ``/api/...`` with ``Authorization: Bearer TOKEN``.

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
streaming response SSE needs, with no ASGI server to pick and wire beside it. The
console may run inside the supervisor: its connections are capped and its slow
clients cut off (:mod:`devcluster.console.gate`), so no client can starve the
supervisor of descriptors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import socket
import threading
from importlib import resources
from pathlib import Path

from aiohttp import web

from devcluster.console.body import Answer, read_object, weight_of
from devcluster.console.gate import HEADER_TIMEOUT, MAX_CONNECTIONS, Gate
from devcluster.console.hub import KEEPALIVE, Hub
from devcluster.console.model import ClusterView, UnknownActionError
from devcluster.console.security import Guard, Handler, error, new_token
from devcluster.errors import DevclusterError, NoClusterError, UnknownInstanceError, UsageError
from devcluster.registry import Registry

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Request bodies are a few bytes of JSON; refuse anything large.
MAX_BODY = 16 * 1024
_HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
_PAGE: web.AppKey[tuple[bytes, str]] = web.AppKey("page", tuple)
_GUARD: web.AppKey[Guard] = web.AppKey("guard", Guard)


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


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as one JSON line with its status (never an HTML page, no traceback)."""
    try:
        return await handler(request)
    except Answer as e:
        return error(e.status, str(e))
    except DevclusterError as e:
        return error(_status_of(e), str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, f"{e.reason}: {request.method} {request.path}")
    except (asyncio.CancelledError, ConnectionError):
        raise  # the client went away: nobody to answer
    except Exception as e:
        # A bug of ours: still one line for the client, and one in the log (the
        # traceback only when debugging), since the console may share the
        # supervisor's log.
        log.warning("console: %s %s failed: %r", request.method, request.path, e)
        log.debug("console: the failure's traceback", exc_info=True)
        return error(500, f"the console failed on {request.method} {request.path}: "
                          f"{type(e).__name__}")


# -- handlers -----------------------------------------------------------------------------

async def enter(request: web.Request) -> web.StreamResponse:
    """The printed URL (the guard has checked its token): off to the page's own path,
    which the guard's cookie is scoped to (set on this answer)."""
    return web.Response(status=303, headers={"Location": request.app[_GUARD].prefix})


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
    body = await read_object(request, '{"weight": 5}')
    if "weight" not in body:
        raise Answer(400, 'the body must name the weight, like {"weight": 5}')
    value = weight_of(body["weight"])
    row = await asyncio.to_thread(hub.view.set_weight, request.match_info["name"], value)
    hub.publish()
    return web.json_response(row)


async def scale(request: web.Request) -> web.Response:
    hub = request.app[_HUB]
    body = await read_object(request, '{"type": "greeter", "count": 3}')
    # Whether the type exists is the supervisor's to say (404 from it): it knows the
    # plan, where the rows forget a type scaled to 0.
    rows = await asyncio.to_thread(hub.view.scale, body.get("type"), body.get("count"))
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
    # _errors outermost: a failure in the guard is one JSON line too.
    app = web.Application(middlewares=[_errors, guard.middleware], client_max_size=MAX_BODY)
    app[_HUB] = Hub(view)
    app[_PAGE] = load_page()
    app[_GUARD] = guard
    app.on_response_prepare.append(guard.on_prepare)
    app.router.add_get("/", enter)
    app.router.add_get(guard.prefix, page)
    # The API twice: at /api/ for scripts (a bearer token), and under the page's path,
    # where the page's cookie goes.
    for base in ("/api/", guard.prefix + "api/"):
        app.router.add_get(base + "instances", instances)
        app.router.add_get(base + "traffic", traffic)
        app.router.add_get(base + "events", events)
        app.router.add_post(base + "instances/{name}/weight", weight)
        app.router.add_post(base + "instances/{name}/{action}", act)
        app.router.add_post(base + "scale", scale)
    return app


class Console:
    """The console server, run by its own event loop in a daemon thread.

    ``port=0`` takes a free port; the URL (with the token) is in :attr:`url` once
    :meth:`start` returned. Binds 127.0.0.1 only; serves at most ``max_connections``
    connections at once. ``port_option``: the flag a taken port is blamed on.
    """

    def __init__(self, state_dir: Path, registry: str | Registry | None = None, *,
                 port: int = 0, token: str | None = None,
                 max_connections: int = MAX_CONNECTIONS, port_option: str = "--port") -> None:
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
                             f"{port_option} or leave it out for a free one") from None
        self.port: int = self._sock.getsockname()[1]
        self.guard = Guard(self.token, self.port)
        self.app = make_app(self.view, self.guard)
        self.max_connections = max_connections
        self.gate: Gate | None = None
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
    def page_url(self) -> str:
        """Where the page lives once the printed URL has set its cookie (no token)."""
        return self.origin + self.guard.prefix

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
        asyncio.get_running_loop().set_exception_handler(_one_line)
        # keepalive_timeout doubles as the header timeout: aiohttp arms it when a
        # connection opens and closes the connection if no whole request came by then.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0,
                               keepalive_timeout=HEADER_TIMEOUT)
        await runner.setup()
        server = runner.server
        assert server is not None  # set up above
        gate = self.gate = Gate(self._sock, server, lambda: len(server.connections),
                                self.max_connections)
        accepting: asyncio.Task[None] | None = None
        try:
            await self.hub.start()
            self._sock.listen(128)
            accepting = asyncio.create_task(gate.serve())
            self._ready.set()
            await self._stopping.wait()
        finally:
            if accepting is not None:
                accepting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await accepting
            await self.hub.stop()
            await runner.cleanup()
            await _cancel_the_rest()

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


async def _cancel_the_rest() -> None:
    """Cancel and await what is left (the handlers of connections the shutdown cut), so
    that closing the loop destroys no pending task."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def _one_line(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """The console loop's unhandled errors as one log line each, not a traceback (the
    console may write into the supervisor's log)."""
    log.warning("console: %s (%r)", context.get("message"), context.get("exception"))
