"""An xDS control plane: any gRPC client dialling ``xds:///<service>`` follows the registry.

Weights, drain, health and restarts reach Go, Java, Node, C++ and Python clients alike
through a bootstrap file (``$GRPC_XDS_BOOTSTRAP``). The envoy protos cost ~46 ms and
~5 MiB to import, so this package imports them only when one of its modules is used:
``import devcluster.xds`` alone is free, and nothing on devcluster's start-up path imports
more.

* :mod:`devcluster.xds.resources` - registry snapshot -> xDS resources (pure);
* :mod:`devcluster.xds.cache` - the versioned snapshot cache and one stream's protocol (sans-IO);
* :mod:`devcluster.xds.server` - the ADS server on grpc.aio, :func:`~devcluster.xds.server.serve`;
* :mod:`devcluster.xds.bootstrap` - a client's bootstrap file (no protos).
"""
