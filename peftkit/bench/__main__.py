"""``python -m peftkit.bench SUITE.yaml`` / ``python -m peftkit.bench --report DIR``."""

import sys

from . import main

sys.exit(main())
