"""The console's front door: its own accept loop, with a cap on open connections.

The console may run inside the supervisor (``up -d --console``), so a flood of
connections to it must never take the descriptors the supervisor needs. asyncio's own
accept loop has no cap and logs a traceback for every ``accept()`` that fails with
EMFILE; this one:

- holds at most ``cap`` connections: a connection over the cap is accepted and closed
  at once (it costs one descriptor for a moment, never one per attacker);
- backs off when ``accept()`` itself fails for want of descriptors or memory, and says
  so in one line, at most once per :data:`COMPLAINT_EVERY` seconds;
- hands every connection it keeps to aiohttp's server (``loop.connect_accepted_socket``).

A request whose headers never end is aiohttp's to close: the console sets its
``keepalive_timeout`` (which aiohttp arms at connection start and checks while no
complete request has arrived) to :data:`HEADER_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Open connections the console serves at once (pages hold one SSE stream each).
MAX_CONNECTIONS = 64
#: Seconds a connection may take to send a request's headers (also the idle limit).
HEADER_TIMEOUT = 5.0
#: Seconds a request may take to send its body once its headers are in.
BODY_TIMEOUT = 5.0
#: Seconds between two log lines about the same trouble.
COMPLAINT_EVERY = 10.0
#: Seconds to wait before accepting again when accept() found no descriptor.
ACCEPT_BACKOFF = 0.2

#: accept() errors that concern one connection only (it went away before we took it).
_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR,
                        errno.EAGAIN})


class _Complaint:
    """One kind of trouble, logged at most once per :data:`COMPLAINT_EVERY` seconds."""

    def __init__(self, text: str, every: float = COMPLAINT_EVERY) -> None:
        self.text = text
        self.every = every
        self.count = 0
        self.total = 0
        self._last = -every

    def __call__(self, detail: str) -> None:
        self.count += 1
        self.total += 1
        now = time.monotonic()
        if now - self._last >= self.every:
            log.warning("console: %s (%s; %d time(s) since the last such line)",
                        self.text, detail, self.count)
            self._last, self.count = now, 0


class Gate:
    """Accepts on ``sock`` and feeds ``protocol_factory``, never above ``cap`` at once.

    ``open_connections`` tells how many connections the server holds now (aiohttp's
    ``Server.connections``): the count is the server's, so a connection is freed
    exactly when the server has let it go.
    """

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 open_connections: Callable[[], int], cap: int = MAX_CONNECTIONS) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.open_connections = open_connections
        self.cap = cap
        self.over_cap = _Complaint(f"refused connections over the cap of {cap}")
        self.starved = _Complaint("cannot accept connections; retrying")

    @property
    def refused(self) -> int:
        """Connections closed at once because the cap was reached (since the start)."""
        return self.over_cap.total

    async def serve(self) -> None:
        """Accept until cancelled."""
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:
                if e.errno in _TRANSIENT:
                    continue
                # Out of descriptors (or anything else accept() may say): the loop
                # must not die, so the console serves again once it can.
                self.starved(e.strerror or str(e))
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            await self._admit(loop, conn)

    async def _admit(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        if self.open_connections() >= self.cap:
            self.over_cap(f"{self.cap} open")
            conn.close()  # at once: holding it would be holding a descriptor for nothing
            return
        conn.setblocking(False)
        try:
            await loop.connect_accepted_socket(self.protocol_factory, conn)
        except OSError as e:  # the peer left between accept() and now
            conn.close()
            log.debug("console: dropped a connection at accept: %s", e)
