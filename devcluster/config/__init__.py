"""Configuration: the Procfile, devcluster.toml, their checks and the plan. Internal."""
