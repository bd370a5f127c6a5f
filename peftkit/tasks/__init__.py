"""Tasks: the only place that knows column names, preprocessing, collation, metrics, prediction
and benchmark scoring (see `peftkit.tasks.base.Task`).

One registry, `TASKS` (name → Task class): every module in this folder is imported here, and a
Task subclass with a ``name`` registers itself, so a new task is one new file (or, outside
peftkit, one imported module). ``get_task(name, **options)`` returns a fresh `Task` (it
remembers label names found by ``prepare``, so use one object per run).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import IGNORE_INDEX, REGISTRY, PadCollator, Task, register

# The built-in modules first (their order is the order tasks are listed in), then any other module here.
FIRST = ("classification", "token_classification", "causal_lm", "seq2seq")
for _module in (*FIRST, *sorted({m.name for m in pkgutil.iter_modules(__path__)} - {*FIRST, "base"})):
    importlib.import_module(f"{__name__}.{_module}")

from .causal_lm import CausalLMTask, exact_match_score, normalize_answer  # noqa: E402
from .classification import ClassificationTask  # noqa: E402
from .token_classification import TokenClassificationTask, first_subtoken_labels  # noqa: E402

TASKS = REGISTRY  # the one registry: name -> Task class


def task_names() -> tuple[str, ...]:
    """The registered task names, built-in ones first."""
    return tuple(REGISTRY)


def task_class(name: str) -> type[Task]:
    """The Task class registered as ``name``; a ValueError listing the known tasks otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown task {name!r}. Valid tasks: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def get_task(name: str | Task, **options) -> Task:
    """A new task object by name (a Task passes through unchanged)."""
    if isinstance(name, Task):
        return name
    return task_class(name)(**options)


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
    "register",
    "task_class",
    "task_names",
]
