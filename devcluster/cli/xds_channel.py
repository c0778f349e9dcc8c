"""``devcluster client --xds``: the calls go through grpc's own xDS client.

The channel dials ``xds:///SERVICE`` with the running cluster's bootstrap (what
``devcluster xds`` prints), so the supervisor's control plane, not devcluster's
balancer, decides where each call goes: weights, health, retries and faults all come
over xDS, as for any gRPC client in any language. grpc tells a Python caller neither
which instance served a call nor its address: the instance is the server's
``devcluster-instance`` header (as for any grpc target), its address and weight are
read from the registry the control plane serves.

>>> check_options(policy="weighted", hedge=None, where=[], target=None)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
devcluster.errors.UsageError: --policy is an option of devcluster's balancer; ...: drop --policy
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

from devcluster.client.calls import CallInfo
from devcluster.client.direct import UNNAMED, GrpcTargetChannel
from devcluster.errors import DevclusterError, UsageError
from devcluster.registry import Registry, open_registry
from devcluster.xds.bootstrap import running_setup

#: The bootstrap file grpc reads first, and the inline bootstrap it reads otherwise.
FILE_VAR, INLINE_VAR = "GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"
#: How long an instance's address is taken from one registry read (a restart moves it).
ADDRESS_TTL = 1.0


def check_options(policy: str | None, hedge: float | None, where: Collection[str],
                  target: str | None) -> None:
    """UsageError naming the first option that makes no sense with ``--xds``."""
    if target is not None:
        raise UsageError("--xds dials xds:///SERVICE of the running cluster and --target "
                         "names servers itself: pass one or the other")
    given = [flag for flag, value in (("--policy", policy), ("--hedge", hedge),
                                      ("--where", where or None)) if value is not None]
    if given:
        raise UsageError(f"{given[0]} is an option of devcluster's balancer; with --xds, grpc's "
                         "own xDS client balances by the cluster's weights and health: "
                         f"drop {given[0]}")


def pick_service(service: str | None, listeners: tuple[str, ...]) -> str:
    """The service to dial: ``service``, or the cluster's only one.

    >>> pick_service(None, ("greeter",))
    'greeter'
    """
    if not listeners:
        raise DevclusterError("no service is registered in the cluster yet; wait until an "
                              "instance serves (devcluster ps)")
    if service is None:
        if len(listeners) == 1:
            return listeners[0]
        raise UsageError(f"--xds calls one service (xds:///SERVICE): pass --service, one of: "
                         f"{', '.join(listeners)}")
    if service not in listeners:
        raise DevclusterError(f"no service {service!r} in the cluster; its xDS listeners: "
                              f"{', '.join(listeners)}")
    return service


class XdsChannel(GrpcTargetChannel):
    """``xds:///SERVICE`` of the cluster in ``state_dir`` (its ``registry``, or the state
    dir's own); NoClusterError when none serves xDS there. Closing it puts the bootstrap
    variables back as they were."""

    def __init__(self, state_dir: str | os.PathLike[str], service: str | None,
                 registry: Registry | None = None,
                 on_call: Callable[[CallInfo], None] | None = None) -> None:
        self.registry = registry or open_registry(state_dir)
        self._owns_registry = registry is None
        try:
            setup = running_setup(Path(state_dir), self.registry)
            self.service = pick_service(service, setup.listeners)
        except BaseException:
            self._close_registry()
            raise
        self._forward = on_call
        self._addresses: dict[str, str] = {}
        self._read_at = -math.inf
        # grpc reads the bootstrap when the channel first resolves: from now until close.
        self._saved = {name: os.environ.get(name) for name in (FILE_VAR, INLINE_VAR)}
        os.environ.pop(FILE_VAR, None)  # it would win over the inline one
        os.environ[INLINE_VAR] = setup.bootstrap_config
        super().__init__(f"xds:///{self.service}", None, on_call=self._named)

    def __repr__(self) -> str:
        return f"<XdsChannel xds:///{self.service}>"

    def _named(self, info: CallInfo) -> None:
        """Fill in the address of the instance that served ``info``, then pass it on."""
        if self._forward is None:
            return
        name = info.instance
        now = time.monotonic()
        if name not in ("-", UNNAMED) and (name not in self._addresses
                                           or now - self._read_at > ADDRESS_TTL):
            self._addresses = {r.name: r.address
                               for r in self.registry.snapshot().records.values()}
            self._read_at = now
        self._forward(replace(info, address=self._addresses.get(name, "")))

    def weights(self) -> dict[str, int]:
        """The weights xDS routes by now: the service's usable instances in the registry."""
        return {r.name: r.weight for r in self.registry.snapshot().usable(self.service)}

    def close(self) -> None:
        super().close()
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._close_registry()

    def _close_registry(self) -> None:
        if self._owns_registry:
            self.registry.close()
