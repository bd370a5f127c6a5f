"""Prompt tuning (Lester et al. 2021) through PEFT: trainable virtual tokens before the input embeddings."""

from __future__ import annotations

from peft import PromptTuningConfig
from torch import nn

from ._peft import apply_peft, heads_to_save, prompt_learning_dims, task_type
from .base import Strategy
from .options import Integer, Modules
from .prefix import NOT_MERGEABLE


class PromptTuning(Strategy):
    name = "prompt"
    summary = "trainable virtual tokens prepended to the input embeddings (PEFT)"
    options = {"num_virtual_tokens": 20, "modules_to_save": "auto"}
    option_rules = {"num_virtual_tokens": Integer(1), "modules_to_save": Modules(optional=True)}
    checkpoint_format = "peft"
    plan_rank = 60
    merge_refusal = NOT_MERGEABLE.format(name="Prompt tuning")
    default_lr = 3e-2

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        config = PromptTuningConfig(
            task_type=task_type(task),
            num_virtual_tokens=o["num_virtual_tokens"],
            modules_to_save=heads_to_save(model, o["modules_to_save"]),
            **prompt_learning_dims(model),
        )
        return apply_peft(model, config, "prompt tuning", probe=True)
