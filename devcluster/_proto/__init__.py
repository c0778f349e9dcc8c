"""Generated protobuf/grpc modules (do not edit; regenerate with ``python -m devcluster._proto.gen``)."""
