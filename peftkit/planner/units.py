"""Memory budgets and sizes: parse "16GiB", print bytes in human units."""

from __future__ import annotations

import math
import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


# --------------------------------------------------------------------------- budgets and units

def parse_budget(budget: str | int | float | None) -> int | None:
    """A memory budget in bytes: ``"16GiB"``, ``"24GB"``, ``"8000MB"``, ``"1.5 GiB"`` or a number of bytes.

    GB/MB are powers of ten, GiB/MiB powers of two; a bare number is bytes. None stays None.
    """
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise ValueError(f"Cannot read the memory budget {budget!r}: give bytes or a string like \"16GiB\", \"24GB\", \"8000MB\".")
    if isinstance(budget, (int, float)):
        if budget <= 0 or not math.isfinite(budget):
            raise ValueError(f"The memory budget must be positive, got {budget!r}. Examples: \"16GiB\", \"24GB\", \"8000MB\".")
        return int(budget)
    match = _BUDGET.match(str(budget))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(
            f"Cannot read the memory budget {budget!r}. Give a number with a unit, for example "
            "\"16GiB\", \"24GB\", \"8000MB\" (GB/MB: powers of 10, GiB/MiB: powers of 2), or an int of bytes."
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"The memory budget must be positive, got {budget!r}. Examples: \"16GiB\", \"24GB\", \"8000MB\".")
    return int(value)


def format_bytes(n: int | float | None) -> str:
    """Human units with powers of two: ``1.5 GiB``, ``300.0 MiB``."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
