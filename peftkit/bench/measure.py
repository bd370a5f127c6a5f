"""Peak memory of one benchmark cell, measured inside the cell's own process.

CPU: the peak resident set size of the process above its idle baseline. The baseline is the
RSS once the libraries are imported and the data is read, before the model is loaded; the
peak is ``VmHWM`` from /proc/self/status (``resource.getrusage`` where /proc is missing). The
high-water mark is reset at the baseline (``echo 5 > /proc/self/clear_refs``) when the kernel
allows it, so data loading before the baseline cannot set the peak.

CUDA: ``torch.cuda.max_memory_allocated`` (reported as the peak) and
``torch.cuda.max_memory_reserved``, reset at the baseline; the CPU peak is recorded too.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

MB = 2**20


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """The resident set size of this process now (the peak so far where /proc is missing)."""
    value = _status_bytes("VmRSS")
    return value if value is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The peak resident set size of this process: VmHWM, else getrusage's ru_maxrss."""
    value = _status_bytes("VmHWM")
    if value is not None:
        return value
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryProbe:
    """``start()`` at the idle baseline, ``stop()`` after the cell: peaks in MiB.

    ``device``: "cpu" or "cuda". On CUDA the CPU peak is measured as well (``peak_rss_mb``).
    """

    device: str = "cpu"
    baseline: int = 0
    reset_ok: bool = False

    def start(self) -> None:
        self.baseline = rss_bytes()
        self.reset_ok = reset_peak_rss()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> dict[str, float | bool | None]:
        """peak_memory_mb (the column), peak_rss_mb, peak_memory_reserved_mb, baseline_rss_mb."""
        rss_peak = max(0, peak_rss_bytes() - self.baseline) / MB
        out: dict[str, float | bool | None] = {
            "peak_rss_mb": round(rss_peak, 1),
            "baseline_rss_mb": round(self.baseline / MB, 1),
            "peak_reset": self.reset_ok,
            "peak_memory_reserved_mb": None,
        }
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
            out["peak_memory_reserved_mb"] = round(torch.cuda.max_memory_reserved() / MB, 1)
        else:
            out["peak_memory_mb"] = round(rss_peak, 1)
        return out


def directory_mb(path) -> float:
    """Size on disk of every file under ``path`` (MiB)."""
    from pathlib import Path

    return round(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / MB, 3)


# Dynamo's timers of a whole compilation: a frame's forward (tracing, AOTAutograd, Inductor) and a backward
# compiled lazily at its first call (torch._dynamo.utils.dynamo_timed keys).
_COMPILE_TIMERS = ("_compile.compile_inner", "backward._backward_impl")


def compile_total() -> float:
    """Seconds ``torch.compile`` has spent compiling in this process so far (recompilations included), read
    from Dynamo's own timers (0 where nothing was compiled or Dynamo was never imported)."""
    utils = sys.modules.get("torch._dynamo.utils")
    timers = getattr(utils, "compilation_time_metrics", None) or {}
    return float(sum(t for key in _COMPILE_TIMERS for t in timers.get(key, ())))


def compile_seconds(since: float) -> float | None:
    """Seconds spent compiling since ``compile_total()`` read ``since``; None where nothing was compiled.
    Part of a compiled cell's train time."""
    spent = compile_total() - since
    return round(spent, 2) if spent > 0 else None
