"""The strategy registry and `wrap`, the one entry point that applies any of them."""

from __future__ import annotations

from typing import Any

from peft import PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..introspect import check_task, head_module_names, infer_task
from ._peft import apply_peft, task_type
from .adalora import AdaLoRA
from .adapter import Adapter, BottleneckAdapter, adapter_parameter_count
from .base import INFO_ATTR, Strategy, WrapInfo, wrap_info
from .bitfit import BitFit
from .full import Full
from .ia3 import IA3
from .lora import LoRA
from .prefix import PrefixTuning
from .prompt import PromptTuning

# The one list of strategies, in the order they are shown. peftkit.static reads the class names
# here (and each class's `name`) from the source, so that `peftkit --help` needs no torch.
CLASSES: tuple[type[Strategy], ...] = (Full, LoRA, AdaLoRA, Adapter, BitFit, PrefixTuning, PromptTuning, IA3)
REGISTRY: dict[str, Strategy] = {cls.name: cls() for cls in CLASSES}
STRATEGIES: tuple[str, ...] = tuple(REGISTRY)

__all__ = [
    "REGISTRY",
    "STRATEGIES",
    "Strategy",
    "WrapInfo",
    "BottleneckAdapter",
    "adapter_parameter_count",
    "default_learning_rate",
    "get_strategy",
    "planner_order",
    "strategy_of",
    "wrap",
    "wrap_info",
]


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; a ValueError listing the valid names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown strategy {name!r}. Valid strategies: {', '.join(STRATEGIES)}, "
            "or pass any peft config (e.g. peft.LoraConfig(...)) instead of a name."
        ) from None


def default_learning_rate(strategy: str) -> float:
    """A sensible learning rate for a strategy (PEFT configs use LoRA's)."""
    return REGISTRY[strategy].default_lr if strategy in REGISTRY else LoRA.default_lr


def planner_order() -> tuple[str, ...]:
    """Strategy names in the order the planner recommends them when no benchmark results rank them."""
    return tuple(sorted(STRATEGIES, key=lambda name: REGISTRY[name].plan_rank))


def strategy_of(model: nn.Module) -> Strategy:
    """The strategy whose hooks the training loop calls for ``model``: the wrapped one; full fine-tuning
    for a plain model (all of it trains); a plain `Strategy`, whose hooks do nothing, for a PEFT config."""
    info = wrap_info(model)
    return REGISTRY.get(info.strategy, Strategy()) if info else REGISTRY[Full.name]


def _check_not_wrapped(model: nn.Module) -> None:
    wrapped = (
        isinstance(model, PeftModel)
        or wrap_info(model) is not None
        or any(isinstance(m, (BaseTunerLayer, BottleneckAdapter)) for m in model.modules())
    )
    if wrapped:
        raise ValueError(
            "This model is already wrapped (it carries PEFT layers or peftkit adapters). Wrap a "
            "fresh base model, or call peftkit.merge(model) first to fold a LoRA/IA3 update in."
        )


def _base_name(model: nn.Module) -> str | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None


def wrap(model: nn.Module, strategy: str | PeftConfig, task: str | None = None, **options: Any) -> nn.Module:
    """Apply a fine-tuning strategy to a Transformers model and return the model to train.

    ``strategy`` is one of `STRATEGIES` or any PEFT config, which passes straight through
    (its task type and the task head in ``modules_to_save`` are filled in when left empty).
    ``task`` is inferred from the model class when not given.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap expects a transformers model (torch.nn.Module), got {type(model).__name__}.")
    task = check_task(task) if task else infer_task(model)
    _check_not_wrapped(model)
    base = _base_name(model)
    if isinstance(strategy, PeftConfig):
        if options:
            raise ValueError("Options go inside the PEFT config; pass either a config or a strategy name with options.")
        if getattr(strategy, "task_type", None) is None:
            strategy.task_type = task_type(task)
        if hasattr(strategy, "modules_to_save") and strategy.modules_to_save is None:
            strategy.modules_to_save = head_module_names(model) or None
        method = str(getattr(strategy.peft_type, "value", strategy.peft_type)).lower()
        wrapped = apply_peft(model, strategy, method)
        info = WrapInfo(f"peft:{method}", {}, task, base, "peft")
    else:
        spec = get_strategy(strategy)
        resolved = spec.resolve_options(options)
        if spec.tasks is not None and task not in spec.tasks:
            raise ValueError(f"Strategy {spec.name!r} does not support task {task!r}.")
        wrapped = spec.apply(model, task, **resolved)
        recorded, checkpoint_format = spec.record(wrapped, resolved)
        info = WrapInfo(spec.name, recorded, task, base, checkpoint_format)
    setattr(wrapped, INFO_ATTR, info)
    return wrapped
