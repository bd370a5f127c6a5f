"""Tasks: the only place that knows column names, preprocessing, collation and metrics.

``get_task("classification" | "token-classification" | "causal-lm", **options)`` returns a fresh
`Task` (it remembers label names found by ``prepare``, so use one object per run).
"""

from __future__ import annotations

from .base import IGNORE_INDEX, PadCollator, Task
from .causal_lm import CausalLMTask, exact_match_score, normalize_answer
from .classification import ClassificationTask
from .token_classification import TokenClassificationTask, first_subtoken_labels

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "token-classification": TokenClassificationTask,
    "causal-lm": CausalLMTask,
}


def get_task(name: str | Task, **options) -> Task:
    """A new task object by name (a Task passes through unchanged)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"Unknown or unsupported task {name!r}. peftkit's tasks: {', '.join(TASKS)}.")
    return TASKS[name](**options)


__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "CausalLMTask",
    "ClassificationTask",
    "PadCollator",
    "Task",
    "TokenClassificationTask",
    "exact_match_score",
    "first_subtoken_labels",
    "get_task",
    "normalize_answer",
]
