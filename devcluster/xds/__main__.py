"""``python -m devcluster.xds [--registry SPEC] [--port P] [--bootstrap FILE]``: serve xDS.

Follows the registry (a state dir, or ``etcd://...``) until SIGINT/SIGTERM; writes the
bootstrap file for clients once listening. A stand-in for ``devcluster xds``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from devcluster import defaults
from devcluster.registry import Registry, open_registry, registry_spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.xds", description=__doc__)
    parser.add_argument("--registry", help="etcd://host:port[/prefix] or a state dir "
                        "(default: $DEVCLUSTER_REGISTRY, else the state dir)")
    parser.add_argument("--state-dir", help="the state dir (default: $DEVCLUSTER_HOME or ./.devcluster)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--bootstrap", help="write the clients' bootstrap JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = open_registry(registry_spec(args.registry, defaults.state_dir(None, args.state_dir)))
    asyncio.run(_run(registry, args.host, args.port, args.bootstrap))
    return 0


async def _run(registry: Registry, host: str, port: int, bootstrap_path: str | None) -> None:
    from devcluster.xds.bootstrap import write_bootstrap
    from devcluster.xds.server import serve

    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        async with serve(registry, host, port) as server:
            if bootstrap_path:
                write_bootstrap(bootstrap_path, server.port, host)
            print(f"xDS server on {host}:{server.port}", flush=True)
            await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


if __name__ == "__main__":
    raise SystemExit(main())
