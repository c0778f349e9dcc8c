"""``python -m services.greeter`` from the repository root: the bundled greeter, as the
repository's Procfile runs it (a service of your own would live here, beside it)."""

from __future__ import annotations

import sys

from devcluster.greeter.server import main

sys.exit(main())
