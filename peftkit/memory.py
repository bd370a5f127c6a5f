"""The memory planner under its former name: everything lives in `peftkit.planner` now.

``from peftkit.memory import plan`` and ``python -m peftkit.memory MODEL ...`` keep working.
"""

from .planner import *  # noqa: F403
from .planner import __all__  # noqa: F401

if __name__ == "__main__":
    from .planner.cli import main

    raise SystemExit(main())
