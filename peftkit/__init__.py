"""peftkit: parameter-efficient fine-tuning strategies for any Transformers model.

The public names are imported lazily (a module ``__getattr__``, as PEFT and transformers do):
``import peftkit`` and ``peftkit --help`` load no torch; ``peftkit.wrap`` imports what it needs
on first use.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "load": "checkpoint", "merge": "checkpoint", "save": "checkpoint",
    "load_data": "data",
    "TASKS": "introspect", "infer_task": "introspect",
    "load_model": "loading",
    "plan": "planner",
    "ParameterCount": "parameters", "count_parameters": "parameters",
    "STRATEGIES": "strategies", "default_learning_rate": "strategies", "wrap": "strategies", "wrap_info": "strategies",
    "get_task": "tasks",
    "TrainConfig": "training", "TrainResult": "training", "train": "training",
    "tune": "tuning",
}

__all__ = [
    "STRATEGIES",
    "TASKS",
    "ParameterCount",
    "TrainConfig",
    "TrainResult",
    "count_parameters",
    "default_learning_rate",
    "get_task",
    "infer_task",
    "load",
    "load_data",
    "load_model",
    "merge",
    "plan",
    "save",
    "train",
    "tune",
    "wrap",
    "wrap_info",
]

if TYPE_CHECKING:
    from .checkpoint import load, merge, save
    from .data import load_data
    from .introspect import TASKS, infer_task
    from .loading import load_model
    from .parameters import ParameterCount, count_parameters
    from .planner import plan
    from .strategies import STRATEGIES, default_learning_rate, wrap, wrap_info
    from .tasks import get_task
    from .training import TrainConfig, TrainResult, train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'peftkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _DropBitsandbytesKernelsWarning(logging.Filter):
    """bitsandbytes (imported by PEFT), on CPUs with AVX512-BF16, tries an optional kernel from the
    `kernels` package's hub repository kernels-community/...: offline, `kernels` logs that it skipped
    the publisher check, and bitsandbytes that it could not load the kernel; it then uses its own. They
    mean nothing to a peftkit user, so those messages (naming kernels-community) are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_DropBitsandbytesKernelsWarning())

del _name
