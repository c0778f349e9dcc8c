"""Hand a port over from a server to its replacement without failing a call (issue 19).

During ``devcluster reload`` the replacement binds the same port as the running server
(SO_REUSEPORT), so a client that dials the port directly (grpcurl, a plain grpc
channel) keeps working. Sharing the port is not enough for zero failed calls with a
stock gRPC server; measured here with a plain pick_first client and 8 calls in flight,
a graceful ``server.stop(grace)`` of the old server still cancels about 6 calls:

* grpc-core's shutdown *cancels* every call that has arrived but is not yet handed to
  the application (a grpc.aio server asks for one call at a time, so under load a few
  wait there), and every call that reaches the server before the client has read the
  GOAWAY. Only calls the application already holds get the grace period;
* the kernel spreads new connections over both listeners, so a client reconnecting
  after GOAWAY may land on the old server again.

What works (0 failed calls, the bench's fixed-port rows), in three parts:

1. :func:`take_over`: the replacement, once it listens, steers every *new* connection
   on the port to itself: a classic BPF program on the SO_REUSEPORT group
   (``SO_ATTACH_REUSEPORT_CBPF``) that returns its own index. When the old server's
   socket closes the index no longer exists and the kernel falls back to its hash.
2. :func:`server_options`: ``grpc.max_connection_age_ms``. A server past the age
   sends GOAWAY *without shutting down*: in-flight and queued calls are served, the
   client moves to a new connection (which now reaches the replacement).
3. :func:`hand_over`: on SIGINT/SIGTERM, while another socket listens on the port, the
   old server waits (at most about one connection age) until no connection has sent
   it anything for :data:`QUIET_MS` (the kernel's TCP_INFO says): the clients have
   moved, and a balanced client's retired sub-channel is idle. Then it stops
   gracefully with no call left to cancel.

With nobody to hand over to (``devcluster stop``, ``scale`` down), the clients have
somewhere else to go only if they balance. They were told (the registry says
``draining``) and said they applied it, but an xDS client's ACK precedes its new
picker (grpc-core hands the update to the channel after it ACKs: under a load of 6 on
two cores, about 1 run in 10 of the grpcio xDS test lost calls as CANCELLED). So the
server waits the same way, at most
:data:`STOP_QUIET_BOUND`: a client that is not leaving (one dialling the port) costs
that bound, no client at all costs nothing.

Every function is a no-op where the kernel lacks the feature (not Linux, no
SO_REUSEPORT): the server then stops as any gRPC server does.

A Python gRPC server of your own gets the same with three lines::

    server = grpc.aio.server(options=handoff.server_options())
    ...; await server.start(); handoff.take_over(port)
    ...; await handoff.hand_over(server.stop, port, grace)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from devcluster import defaults

__all__ = [
    "QUIET_MS",
    "SO_ATTACH_REUSEPORT_CBPF",
    "STOP_QUIET_BOUND",
    "busy_connections",
    "enabled",
    "hand_over",
    "server_options",
    "take_over",
]

#: SO_ATTACH_REUSEPORT_CBPF from <asm-generic/socket.h> (Linux 4.5+).
SO_ATTACH_REUSEPORT_CBPF = 51
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k
_LISTEN = "0A"
#: Netlink's sock_diag (linux/sock_diag.h, linux/netlink.h): a dump of TCP sockets.
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _TCP_LISTEN = 4, 20, 10
_NLM_F_REQUEST, _NLM_F_DUMP, _NLMSG_ERROR, _NLMSG_DONE = 0x1, 0x300, 2, 3
_POLL_S = 0.01
_TCP_INFO_LEN, _LAST_DATA_RECV = 104, 52  # struct tcp_info (linux/tcp.h): its u32 at 52
#: A connection that received nothing for this long has no client calling on it.
QUIET_MS = 50
#: With no replacement, the longest a stopping server waits for its clients to leave.
STOP_QUIET_BOUND = 0.3


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Did devcluster ask this server to share its port (``DEVCLUSTER_REUSEPORT=1``)?"""
    env = os.environ if environ is None else environ
    return env.get(defaults.ENV_REUSEPORT) == "1" and hasattr(socket, "SO_REUSEPORT")


def server_options(environ: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
    """gRPC server options: SO_REUSEPORT and a connection age only when devcluster asks.

    gRPC sets SO_REUSEPORT by default on Linux; without devcluster asking it is turned
    off, so a port in use is an error, as for any other server.
    """
    if not enabled(environ):
        return [("grpc.so_reuseport", 0)]
    return [("grpc.so_reuseport", 1),
            ("grpc.max_connection_age_ms", defaults.HANDOFF_CONNECTION_AGE_MS)]


def _sockets(port: int, state: str) -> dict[str, str]:
    """Inode -> local address of the TCP sockets on local ``port`` in ``state``."""
    found: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local = fields[1]
            if fields[3] == state and int(local.rpartition(":")[2], 16) == port:
                found[fields[9]] = local
    return found


def _listening(port: int) -> dict[str, str]:
    """:func:`_sockets` in the LISTEN state, asked of the kernel over netlink (sock_diag,
    as ``ss -l`` does: only listening sockets come back, in binary) rather than read
    from /proc/net/tcp, whose text for every socket of a cluster of 100 took 10 ms of
    CPU per read: each stopping greeter reads it. Falls back to :func:`_sockets`."""
    found: dict[str, str] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            for family in (socket.AF_INET, socket.AF_INET6):
                # inet_diag_req_v2: family, protocol, ext, pad, states; a zeroed sockid.
                request = struct.pack("=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0,
                                      1 << _TCP_LISTEN)
                nl.send(struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY,
                                    _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
                if not _read_dump(nl, port, found):
                    return _sockets(port, _LISTEN)
    except OSError:
        return _sockets(port, _LISTEN)
    return found


def _read_dump(nl: socket.socket, port: int, found: dict[str, str]) -> bool:
    """Read one sock_diag dump to its end, adding the sockets on local ``port`` to
    ``found`` (inode -> ``port N``: only the inodes are used); False if the kernel
    answered with an error."""
    while True:
        data = nl.recv(1 << 16)
        at = 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if kind == _NLMSG_DONE:
                return True
            if kind == _NLMSG_ERROR or length < 16:
                return False
            # inet_diag_msg: family, state, timer, retrans; sockid (sport, big-endian,
            # first); expires, rqueue, wqueue, uid, inode.
            body = at + 16
            if struct.unpack_from("!H", data, body + 4)[0] == port:
                inode = struct.unpack_from("=I", data, body + 68)[0]
                found[str(inode)] = f"port {port}"
            at += (length + 3) & ~3


def _own_fds(inodes: Mapping[str, str]) -> list[int]:
    """This process's descriptors of the sockets with these inodes."""
    fds = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/self/fd/{name}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    fds.append(int(name))
    return fds


def _connections(port: int) -> list[int]:
    """This process's descriptors of established TCP connections on local ``port``,
    found among its own descriptors: a scan of the system's socket table (the way
    :func:`_sockets` does it) costs each of a hundred greeters stopping at once ~10 ms
    of CPU per look."""
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:["):
                    continue
                with socket.socket(fileno=os.dup(int(name))) as sock:
                    if (sock.family in (socket.AF_INET, socket.AF_INET6)
                            and sock.type == socket.SOCK_STREAM
                            and sock.getsockname()[1] == port):
                        sock.getpeername()  # a listening socket has none: OSError
                        found.append(int(name))
    return found


def _others_listening(port: int) -> bool:
    """Does a socket that is not ours listen on ``port``?"""
    listeners = _listening(port)
    return len(listeners) > len(_own_fds(listeners))


def _bpf_return(value: int) -> tuple[bytes, Any]:
    """A ``struct sock_fprog`` of one instruction, ``return value``, and its buffer
    (keep it alive until the setsockopt returns: the kernel reads through the pointer)."""
    import ctypes  # only a replacement needs it: not on every greeter's start

    program = ctypes.create_string_buffer(struct.pack("=HBBI", _BPF_RET_K, 0, 0, value))
    return struct.pack("@HP", 1, ctypes.addressof(program)), program


def take_over(port: int) -> bool:
    """Steer every new connection on ``port`` to this process's listening socket.

    Call it once the server listens. It does something only when devcluster asked for
    port sharing and another socket already listens on the port (we are a replacement);
    it returns whether it did. Our socket joined the group last, so its index is the
    number of listeners less one.
    """
    if not enabled():
        return False
    listeners = _listening(port)
    ours = _own_fds(listeners)
    if len(ours) != 1 or len(listeners) < 2:
        return False
    fprog, program = _bpf_return(len(listeners) - 1)
    with socket.socket(fileno=os.dup(ours[0])) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        except OSError:
            return False
    del program
    return True


def _quiet_ms(fd: int) -> int:
    """Milliseconds since the connection on ``fd`` last received data (TCP_INFO's
    ``tcpi_last_data_recv``); 0 when the kernel does not say."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return 0
    if len(info) < _LAST_DATA_RECV + 4:
        return 0
    return int(struct.unpack_from("=I", info, _LAST_DATA_RECV)[0])


def busy_connections(port: int, quiet_ms: int = QUIET_MS) -> int:
    """How many of this process's connections on ``port`` got data in the last
    ``quiet_ms``: a client still calling. A client that moved away (or a balanced
    client's retired sub-channel) sends nothing more."""
    return sum(1 for fd in _connections(port) if _quiet_ms(fd) < quiet_ms)


async def _quiet(port: int, deadline: float) -> None:
    """Until no connection on ``port`` is calling, seen on two looks a poll apart (or
    ``deadline``). The kernel says when data last arrived, not whether this process has
    taken the call it carried: a call that arrived but waits for the server to ask for
    it is cancelled by a shutdown. The second look comes after our own loop ran again,
    so a server starved of CPU has had its turn (under a load of 6 on two cores, one
    look at 30 ms lost a call in about 1 run in 10 of the xDS test; two looks at 50 ms
    lost none in 60)."""
    looks = 0
    while time.monotonic() < deadline:
        connections = _connections(port)
        if not connections:
            return  # nobody connected: nothing can arrive
        busy = any(_quiet_ms(fd) < QUIET_MS for fd in connections)
        looks = 0 if busy else looks + 1
        if looks >= 2:
            return
        await asyncio.sleep(_POLL_S)


async def hand_over(stop: Callable[[float | None], Awaitable[Any] | Any], port: int,
                    grace: float | None) -> None:
    """Stop a server gracefully, after its clients moved to a replacement on ``port``
    (or, with none, to the other instances).

    ``stop`` is ``server.stop`` (grpc.aio's or the sync server's). Wait until no
    connection is calling any more: while another socket listens on the port, at most
    one connection age of :func:`server_options` plus a little (a busy connection
    leaves within it); with none, at most :data:`STOP_QUIET_BOUND`. Then nothing
    arrives that a shutdown would cancel.
    """
    if enabled():
        bound = STOP_QUIET_BOUND
        if _others_listening(port):  # a replacement: busy connections leave within an age
            bound = 1.2 * defaults.HANDOFF_CONNECTION_AGE_MS / 1000 + 0.3
        await _quiet(port, time.monotonic() + bound)
    result = stop(grace)
    if isinstance(result, Awaitable):
        await result
