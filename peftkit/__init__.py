"""peftkit: parameter-efficient fine-tuning strategies for any Transformers model."""

from .checkpoint import load, merge, save
from .data import load_data
from .introspect import TASKS, infer_task
from .loading import load_model
from .memory import plan
from .parameters import ParameterCount, count_parameters
from .strategies import STRATEGIES, default_learning_rate, wrap, wrap_info
from .tasks import get_task
from .training import TrainConfig, TrainResult, train
from .tune import tune

__version__ = "0.1.0"

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
