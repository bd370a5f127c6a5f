"""The optimizer's parameter groups: weight decay on weights only, and the task head's own rate."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _no_decay(module: nn.Module, param_name: str, param: torch.Tensor) -> bool:
    return param_name.endswith("bias") or param.ndim < 2 or "norm" in type(module).__name__.lower()


def _head_parameters(model: nn.Module) -> set[int]:
    """ids of the trainable parameters of the task head (PEFT's ``modules_to_save`` copy included)."""
    from ..introspect import head_module_names

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        heads = head_module_names(base)
    except ValueError:
        heads = []
    if not heads:
        raise ValueError(
            f"head_lr was given, but {type(base).__name__} has no task head created fresh for the task "
            "(only classification and token-classification models have one). Drop head_lr (--head-lr)."
        )
    return {id(p) for name in heads for p in base.get_submodule(name).parameters() if p.requires_grad}


def parameter_groups(
    model: nn.Module, weight_decay: float, *, lr: float | None = None, head_lr: float | None = None
) -> list[dict[str, Any]]:
    """Trainable parameters as AdamW groups: weight decay on weights; none on biases, norms.

    Each group is named (``"decay"``, ``"no_decay"``, and with ``head_lr`` ``"head_decay"``,
    ``"head_no_decay"``) and carries its own ``lr`` when ``lr`` is given: the task head's
    parameters get ``head_lr``, the others ``lr``. A strategy that needs groups of its own
    (LoRA+) adjusts these in its ``param_groups`` hook, which the training loop calls.
    """
    if head_lr is not None and lr is None:
        raise ValueError("parameter_groups: head_lr needs lr, the rate of the other parameters.")
    head = _head_parameters(model) if head_lr is not None else set()
    groups: dict[str, list[torch.Tensor]] = {
        "decay": [],
        "no_decay": [],
        "head_decay": [],
        "head_no_decay": [],
    }
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            key = "no_decay" if _no_decay(module, name, param) else "decay"
            groups[f"head_{key}" if id(param) in head else key].append(param)
    if not seen:
        raise ValueError(
            "The model has no trainable parameters. Wrap it first, e.g. peftkit.wrap(model, 'lora'), "
            "or pass a model whose parameters require grad."
        )
    out = []
    for key, params in groups.items():
        if key.startswith("head_") and not params:
            continue
        group = {
            "name": key,
            "params": params,
            "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay,
        }
        if lr is not None:
            group["lr"] = head_lr if key.startswith("head_") else lr
        out.append(group)
    return out
