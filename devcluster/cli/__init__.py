"""The ``devcluster`` command line. Internal: importing this package imports nothing heavy."""
