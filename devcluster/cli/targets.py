"""What ``devcluster client --target`` accepts, and which policy goes with it.

Three kinds of target, as in the article the project grew from:

* none: the registry of a running cluster (devcluster's balancer, live);
* ``static:///H:P,H:P,...``: a fixed list, like the article's StaticResolver,
  balanced by devcluster's own pickers (no cluster, no state dir);
* a grpc target (``ipv4:H:P,...``, ``ipv6:[A]:P,...``, ``dns:///H:P``, ``unix:PATH``,
  or a plain ``H:P``): handed to grpc's own resolver, and ``--policy`` to grpc's
  own load balancer (``grpc.lb_policy_name``), to compare the two on the same servers.

Parsing is pure: no I/O, a :class:`~devcluster.errors.UsageError` naming the bad
part and the fix for every malformed target.

>>> parse_target("static:///127.0.0.1:50051,127.0.0.1:50052").addresses
('127.0.0.1:50051', '127.0.0.1:50052')
>>> parse_target("ipv4:127.0.0.1:50051,127.0.0.1:50052").kind
'grpc'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal

from devcluster.client.picker import POLICIES
from devcluster.errors import UsageError

#: The LB policies grpc itself offers without extra configuration.
GRPC_POLICIES: Final = ("pick_first", "round_robin")

#: Schemes grpc's core resolves by itself.
GRPC_SCHEMES: Final = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"})

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")

EXAMPLES = ("static:///127.0.0.1:50051,127.0.0.1:50052 (devcluster's balancer), "
            "ipv4:127.0.0.1:50051,127.0.0.1:50052 or 127.0.0.1:50051 (grpc's own)")


@dataclass(frozen=True)
class Target:
    """A parsed ``--target``.

    ``kind`` is ``static`` (``addresses`` holds the list, in order) or ``grpc``
    (``text`` goes to ``grpc.insecure_channel`` unchanged).
    """

    kind: Literal["static", "grpc"]
    text: str
    addresses: tuple[str, ...] = ()

    @property
    def comma_list(self) -> bool:
        """True for the classic mistake: a comma-separated list with no scheme.

        grpc reads it as one host name and fails to resolve it.

        >>> parse_target("127.0.0.1:50051,127.0.0.1:50052").comma_list
        True
        """
        return self.kind == "grpc" and "," in self.text and _scheme_of(self.text) is None


def _scheme_of(text: str) -> str | None:
    """The URI scheme of ``text``, or None for a plain ``host:port`` (or a list of them)."""
    m = _SCHEME.match(text)
    if m is None:
        return None
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme in GRPC_SCHEMES or scheme == "static":
        return scheme
    if rest[:1].isdigit():  # "localhost:50051": a host and a port, not a scheme
        return None
    return scheme


def _address(item: str, where: str) -> str:
    """``item`` as a ``host:port`` address; a UsageError naming ``where`` if it is not."""
    m = _HOST_PORT.match(item)
    if m is None:
        raise UsageError(f"bad address {item!r} in {where}; expected HOST:PORT, "
                         "e.g. 127.0.0.1:50051 or [::1]:50051")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise UsageError(f"bad port {port} in {item!r} of {where}; ports are 1..65535")
    return item


def _address_list(body: str, where: str, kind: str | None = None) -> tuple[str, ...]:
    items = [item.strip() for item in body.split(",")]
    if not body.strip() or any(not item for item in items):
        raise UsageError(f"empty address in {where}; list HOST:PORT addresses separated "
                         "by commas, e.g. 127.0.0.1:50051,127.0.0.1:50052")
    addresses = tuple(_address(item, where) for item in items)
    seen: set[str] = set()
    for address in addresses:
        if address in seen:
            raise UsageError(f"{address} is listed twice in {where}; list each server once")
        seen.add(address)
        if kind is not None:
            host = address.rsplit(":", 1)[0].strip("[]")
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None
            if ip is None or ip.version != (4 if kind == "ipv4" else 6):
                raise UsageError(f"{host!r} in {where} is not an {kind} address; {kind}: "
                                 "takes IP:PORT only (dns:///HOST:PORT resolves names)")
    return addresses


def parse_target(text: str) -> Target:
    """Parse a ``--target`` value; UsageError (one line, with the fix) when malformed.

    >>> parse_target("dns:///localhost:50051").kind
    'grpc'
    >>> parse_target("nacos:///x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    devcluster.errors.UsageError: unknown target scheme 'nacos' in 'nacos:///x'; ...
    """
    text = text.strip()
    where = f"--target {text!r}"
    if not text:
        raise UsageError(f"empty --target; e.g. {EXAMPLES}")
    scheme = _scheme_of(text)
    if scheme == "static":
        body = text.split(":", 1)[1]
        # static:///a,b (empty authority, as in the article) or static:a,b
        body = body[3:] if body.startswith("///") else body
        if body.startswith("/"):
            raise UsageError(f"bad {where}; write static:///HOST:PORT,HOST:PORT "
                             "(three slashes: no authority)")
        return Target("static", text, _address_list(body, where))
    if scheme in ("ipv4", "ipv6"):
        body = text.split(":", 1)[1]
        body = body[3:] if body.startswith("///") else body
        _address_list(body, where, scheme)
        return Target("grpc", text)
    if scheme in GRPC_SCHEMES:
        if not text.split(":", 1)[1].strip("/"):
            raise UsageError(f"empty {where}; name what to resolve, e.g. dns:///localhost:50051")
        return Target("grpc", text)
    if scheme is not None:
        raise UsageError(f"unknown target scheme {scheme!r} in {text!r}; use {EXAMPLES}")
    return Target("grpc", text)


def resolve_policy(target: Target | None, policy: str | None) -> str:
    """The policy to use: ``policy`` checked against the target's kind, or its default.

    devcluster's balancer (registry, ``static:``) defaults to ``weighted``; a grpc
    target to grpc's own default, ``pick_first``.

    >>> resolve_policy(None, None), resolve_policy(parse_target("ipv4:127.0.0.1:1"), None)
    ('weighted', 'pick_first')
    """
    if target is None or target.kind == "static":
        if policy is None:
            return "weighted"
        if policy not in POLICIES:
            raise UsageError(f"unknown policy {policy!r}; choose one of: {', '.join(POLICIES)}")
        return policy
    if policy is None:
        return "pick_first"
    if policy not in GRPC_POLICIES:
        if policy == "weighted":
            raise UsageError(f"grpc's own balancer has no 'weighted' policy; use --policy "
                             f"{' or '.join(GRPC_POLICIES)} with {target.text!r}, or "
                             "--target static:///HOST:PORT,... for devcluster's weighted one")
        raise UsageError(f"unknown policy {policy!r}; with a grpc target choose one of: "
                         f"{', '.join(GRPC_POLICIES)}")
    return policy
