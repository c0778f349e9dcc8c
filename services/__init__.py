"""Example gRPC services that devcluster runs (the Greeter of the demo cluster)."""
