from __future__ import annotations

import sys

from services.greeter.server import main

sys.exit(main())
