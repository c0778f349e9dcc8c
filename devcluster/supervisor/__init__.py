"""The supervisor: instances, their processes, readiness, preload and reload. Internal."""
