"""``python -m peftkit.planner MODEL ...``: the same as ``peftkit plan``."""

from .cli import main

raise SystemExit(main())
