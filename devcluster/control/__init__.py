"""The control plane: the supervisor's gRPC verbs over a unix socket, and reaching a cluster. Internal."""
