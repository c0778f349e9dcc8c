"""The bootstrap file a gRPC client reads (``$GRPC_XDS_BOOTSTRAP``) to find our ADS server.

>>> bootstrap(50000)["xds_servers"][0]["server_uri"]
'127.0.0.1:50000'
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: The ``node.id`` a client presents when none is given (logs name it on a NACK).
DEFAULT_NODE_ID = "devcluster-client"


def bootstrap(port: int, host: str = "127.0.0.1", node_id: str = DEFAULT_NODE_ID) -> dict[str, Any]:
    """The bootstrap JSON (gRFC A27) for an ADS server at ``host:port``, insecure, xDS v3."""
    return {
        "xds_servers": [{
            "server_uri": f"{host}:{port}",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": node_id, "locality": {"region": "devcluster"}},
    }


def write_bootstrap(path: str | os.PathLike[str], port: int, host: str = "127.0.0.1",
                    node_id: str = DEFAULT_NODE_ID) -> Path:
    """Write :func:`bootstrap` to ``path`` atomically (a reader never sees half a file)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(bootstrap(port, host, node_id), f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
