from __future__ import annotations

import sys

from devcluster.greeter.server import main

sys.exit(main())
