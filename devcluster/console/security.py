"""The console's guard: a local web page that can kill processes is an attack surface.

Every request passes three checks, in this order:

1. ``Host`` must be ``127.0.0.1:P`` or ``localhost:P`` (P: the console's port), else
   421: a page of another site whose name was re-pointed at 127.0.0.1 (DNS
   rebinding) is same-origin for the browser, but it sends its own host name.
2. The token: ``?token=`` in the query (the URL the console printed), ``Authorization:
   Bearer TOKEN`` from a script, or the page's cookie; else 401.
3. A request that changes something (any method but GET/HEAD/OPTIONS) whose ``Origin``
   is not the console's own, or that the browser marks ``Sec-Fetch-Site:
   cross-site``, is refused with 403 (cross-site request forgery). Scripts that send
   no ``Origin`` pass: they hold the token.

The cookie. Browsers keep cookies per host, not per port: a cookie set by
``127.0.0.1:P`` goes to every server on 127.0.0.1, and SameSite does not help (the
same site). So the page lives under a random path, ``/c/<random>/``, known only to
whoever presented the token, and the cookie (HttpOnly, SameSite=Strict) is scoped to
that path: the browser sends it to no other path, hence to no other server unless
that server knows the path. The printed URL (``/?token=...``) answers a redirect
there, setting the cookie. The cookie is honoured under that path only.

Errors are one JSON line, ``{"error": "..."}``, like every other API error.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Methods that never change anything; every other one gets the Origin check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOSTS = ("127.0.0.1", "localhost")


def new_token() -> str:
    """A fresh random token (32 bytes of entropy, URL-safe)."""
    return secrets.token_urlsafe(32)


def new_prefix() -> str:
    """A fresh random path for the page and its cookie, like ``/c/3q2-7wX.../``."""
    return f"/c/{secrets.token_urlsafe(16)}/"


def error(status: int, message: str) -> web.Response:
    """The API's error answer: one JSON line."""
    return web.json_response({"error": message}, status=status,
                             headers={"Cache-Control": "no-store"})


@dataclass
class Guard:
    """The checks of one console, bound to its port and token."""

    token: str
    port: int
    #: The page's path, and the only path the cookie is sent to and honoured on.
    prefix: str = field(default_factory=new_prefix)
    hosts: tuple[str, ...] = field(init=False)
    origins: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.hosts = tuple(f"{h}:{self.port}" for h in HOSTS)
        self.origins = tuple(f"http://{h}" for h in self.hosts)

    @property
    def cookie_name(self) -> str:
        # Cookies are shared by every port of a host: one name per console.
        return f"devcluster-console-{self.port}"

    def token_matches(self, given: str | None) -> bool:
        # A token is URL-safe ASCII: anything else (aiohttp hands undecodable header
        # bytes over as surrogates) is simply not it.
        return given is not None and given.isascii() \
            and hmac.compare_digest(given.encode(), self.token.encode())

    def presented_token(self, request: web.Request) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query."""
        query = request.query.get("token")
        if query is not None:
            return query, True
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip(), False
        if not request.path.startswith(self.prefix):
            return None, False  # our cookie never goes there: one that does is not ours
        return request.cookies.get(self.cookie_name), False

    def refusal(self, request: web.Request) -> web.Response | None:
        """Why ``request`` must not be served (an error answer), or None."""
        host = request.headers.get("Host", "")
        if host not in self.hosts:
            return error(421, f"Host {host!r} is not this console's (expected "
                              f"{' or '.join(self.hosts)}); open the URL it printed")
        token, _ = self.presented_token(request)
        if not self.token_matches(token):
            what = "missing" if not token else "wrong" if token.isascii() else "invalid"
            return error(401, f"{what} token: open the URL `devcluster console` printed "
                              "(it ends with ?token=...) or send Authorization: Bearer TOKEN")
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and origin not in self.origins:
                return error(403, f"Origin {origin!r} may not change this cluster; only the "
                                  f"console's own page ({self.origins[0]}) may")
            if request.headers.get("Sec-Fetch-Site", "same-origin") not in {"same-origin",
                                                                           "none"}:
                return error(403, "a cross-site request may not change this cluster")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        response = await handler(request)
        _, in_query = self.presented_token(request)
        if in_query and request.method == "GET" and not response.prepared \
                and response.status < 400:
            # From now on the cookie carries the token, to the page's path only (see
            # the module's doc); SameSite=Strict keeps other sites' requests from
            # carrying it along.
            response.set_cookie(self.cookie_name, self.token, httponly=True,
                                samesite="Strict", path=self.prefix)
        return response

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers for every answer (the SSE stream too, whose headers go out early)."""
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
