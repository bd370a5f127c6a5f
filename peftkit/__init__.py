"""peftkit: parameter-efficient fine-tuning strategies for any Transformers model."""

from .checkpoint import load, merge, save
from .introspect import TASKS, infer_task
from .parameters import ParameterCount, count_parameters
from .strategies import STRATEGIES, default_learning_rate, wrap, wrap_info

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "TASKS",
    "ParameterCount",
    "count_parameters",
    "default_learning_rate",
    "infer_task",
    "load",
    "merge",
    "save",
    "wrap",
    "wrap_info",
]
