"""LoRA (Hu et al. 2021) and its PEFT variants: DoRA, rsLoRA and PEFT's init schemes."""

from __future__ import annotations

from peft import LoraConfig
from torch import nn

from ..targets import attention_targets
from ._peft import apply_peft, has_conv1d, heads_to_save, task_type
from .base import Strategy


def resolve_targets(model: nn.Module, target_modules) -> list[str] | str:
    """LoRA's targets as PEFT takes them: "auto" read off the model, a list of names, or a string passed
    as is ("all-linear" or a regular expression over full module names)."""
    targets = attention_targets(model) if target_modules == "auto" else target_modules
    return targets if isinstance(targets, str) else list(targets)


class LoRA(Strategy):
    name = "lora"
    summary = "low-rank updates on the attention projections (PEFT)"
    options = {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "auto",  # or a list of names, "all-linear", a regex
        "use_dora": False,
        "use_rslora": False,
        "init": True,  # PEFT's init_lora_weights: True, "gaussian", "pissa", "olora", ...
        "bias": "none",
        "modules_to_save": "auto",
    }
    uses_peft = True
    mergeable = True
    default_lr = 5e-4

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        targets = resolve_targets(model, o["target_modules"])
        config = LoraConfig(
            task_type=task_type(task),
            r=o["r"],
            lora_alpha=o["alpha"],
            lora_dropout=o["dropout"],
            target_modules=targets,
            use_dora=o["use_dora"],
            use_rslora=o["use_rslora"],
            init_lora_weights=o["init"],
            bias=o["bias"],
            modules_to_save=heads_to_save(model, o["modules_to_save"]),
            fan_in_fan_out=has_conv1d(model, targets),
        )
        return apply_peft(model, config, "LoRA")
