"""Soft prompts through PEFT: prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021)."""

from __future__ import annotations

from peft import PrefixTuningConfig, PromptTuningConfig
from torch import nn

from ._peft import apply_peft, heads_to_save, prompt_learning_dims, task_type
from .base import Strategy
from .options import Flag, Integer, Modules

_NOT_MERGEABLE = (
    "{name} adds virtual tokens in front of every input; there is no weight to fold them "
    "into. Keep the PEFT model, or train with 'lora' or 'ia3' if you need a merged model."
)


class PromptTuning(Strategy):
    name = "prompt"
    summary = "trainable virtual tokens prepended to the input embeddings (PEFT)"
    options = {"num_virtual_tokens": 20, "modules_to_save": "auto"}
    option_rules = {"num_virtual_tokens": Integer(1), "modules_to_save": Modules(optional=True)}
    checkpoint_format = "peft"
    plan_rank = 60
    merge_refusal = _NOT_MERGEABLE.format(name="Prompt tuning")
    default_lr = 3e-2

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        config = PromptTuningConfig(
            task_type=task_type(task),
            num_virtual_tokens=o["num_virtual_tokens"],
            modules_to_save=heads_to_save(model, o["modules_to_save"]),
            **prompt_learning_dims(model),
        )
        return apply_peft(model, config, "prompt tuning", probe=True)


class PrefixTuning(Strategy):
    name = "prefix"
    summary = "trainable key/value prefixes in every attention layer (PEFT)"
    options = {"num_virtual_tokens": 20, "prefix_projection": False, "modules_to_save": "auto"}
    option_rules = {"num_virtual_tokens": Integer(1), "prefix_projection": Flag(), "modules_to_save": Modules(optional=True)}
    checkpoint_format = "peft"
    plan_rank = 70
    merge_refusal = _NOT_MERGEABLE.format(name="Prefix tuning")
    default_lr = 1e-2

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        config = PrefixTuningConfig(
            task_type=task_type(task),
            num_virtual_tokens=o["num_virtual_tokens"],
            prefix_projection=o["prefix_projection"],
            modules_to_save=heads_to_save(model, o["modules_to_save"]),
            **prompt_learning_dims(model),
        )
        return apply_peft(model, config, "prefix tuning", probe=True)
