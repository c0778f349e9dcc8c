"""The bootstrap file a gRPC client reads (``$GRPC_XDS_BOOTSTRAP``) to find our ADS server.

>>> bootstrap(50000)["xds_servers"][0]["server_uri"]
'127.0.0.1:50000'
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devcluster.registry import Registry

#: The ``node.id`` a client presents when none is given (logs name it on a NACK).
DEFAULT_NODE_ID = "devcluster-client"


#: Where the bootstrap names the ``[xds.<name>]`` listeners (node metadata: gRPC sends
#: it to the server and reads nothing in it), so ``devcluster xds`` can list them.
GROUPS_KEY = "devcluster_groups"


def bootstrap(port: int, host: str = "127.0.0.1", node_id: str = DEFAULT_NODE_ID,
              groups: Iterable[str] = ()) -> dict[str, Any]:
    """The bootstrap JSON (gRFC A27) for an ADS server at ``host:port``, insecure, xDS v3."""
    node: dict[str, Any] = {"id": node_id, "locality": {"region": "devcluster"}}
    if groups:
        node["metadata"] = {GROUPS_KEY: sorted(groups)}
    return {
        "xds_servers": [{
            "server_uri": f"{host}:{port}",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": node,
    }


def write_bootstrap(path: str | os.PathLike[str], port: int, host: str = "127.0.0.1",
                    node_id: str = DEFAULT_NODE_ID, groups: Iterable[str] = ()) -> Path:
    """Write :func:`bootstrap` to ``path`` atomically (a reader never sees half a file)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(bootstrap(port, host, node_id, groups), f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class ClientSetup:
    """How to point a gRPC client at a running cluster (``devcluster xds``, ``Cluster.xds()``)."""

    bootstrap: str
    """The bootstrap file's absolute path: ``export GRPC_XDS_BOOTSTRAP=...``."""
    server_uri: str
    """Where the cluster's ADS server listens (``127.0.0.1:PORT``)."""
    listeners: tuple[str, ...]
    """The listener names, one per service: a client dials ``xds:///NAME``."""
    bootstrap_config: str
    """The same bootstrap inline (``GRPC_XDS_BOOTSTRAP_CONFIG``), for clients without files."""

    def to_dict(self) -> dict[str, Any]:
        return {"bootstrap": self.bootstrap, "server_uri": self.server_uri,
                "listeners": list(self.listeners), "bootstrap_config": self.bootstrap_config}

    def exports(self) -> str:
        """Shell lines a person pastes: the variable, then what to dial."""
        dial = ", ".join(f"xds:///{n}" for n in self.listeners) or "(no service registered yet)"
        return (f"export GRPC_XDS_BOOTSTRAP={shlex.quote(self.bootstrap)}\n"
                f"# or, without the file:\n"
                f"export GRPC_XDS_BOOTSTRAP_CONFIG={shlex.quote(self.bootstrap_config)}\n"
                f"# xDS server: {self.server_uri}; dial: {dial}")


def client_setup(path: str | os.PathLike[str], services: Iterable[str]) -> ClientSetup | None:
    """What :func:`write_bootstrap` wrote at ``path`` (None: no such file, so no running
    cluster serves xDS there) and the listener of each of ``services``."""
    target = Path(path).absolute()
    try:
        text = target.read_text()
        config = json.loads(text)
        uri = str(config["xds_servers"][0]["server_uri"])
        groups = [str(g) for g in config["node"].get("metadata", {}).get(GROUPS_KEY, [])]
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return ClientSetup(str(target), uri, tuple(sorted({*services, *groups})),
                       json.dumps(config, separators=(",", ":")))


def running_setup(state_dir: Path, registry: Registry) -> ClientSetup:
    """:class:`ClientSetup` of the cluster running in ``state_dir`` (whose registry is
    ``registry``); NoClusterError when none serves xDS there."""
    import time

    from devcluster.defaults import XDS_START_WAIT, layout
    from devcluster.errors import NoClusterError
    from devcluster.statedir import running_pid

    services = {r.service for r in registry.snapshot().records.values()}
    path = layout(state_dir).xds_bootstrap
    # A supervisor starts its xDS server just after it reports ready (`up -d` returns
    # first): while it runs and has not written the bootstrap yet, wait for it.
    deadline = time.monotonic() + XDS_START_WAIT
    while ((setup := client_setup(path, services)) is None and time.monotonic() < deadline
           and running_pid(state_dir) is not None):
        time.sleep(0.02)
    if setup is None:
        raise NoClusterError(f"no cluster serves xDS in {state_dir}; start one with "
                             "`devcluster up -d` (its supervisor serves xDS)")
    return setup
