"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from torch import nn

from ..introspect import is_quantized
from .base import Strategy


class Full(Strategy):
    name = "full"
    checkpoint_format = "full"
    plan_rank = 20
    summary = "every parameter trains"
    mergeable = True
    default_lr = 2e-5

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        if is_quantized(model):
            raise ValueError(
                "Full fine-tuning needs an unquantized model: 8-bit and 4-bit weights cannot be "
                "trained directly. Load the model with quantization=None, or pick 'lora', "
                "'adapter', 'bitfit' or 'ia3' to train on the quantized base (QLoRA style)."
            )
        for p in model.parameters():
            p.requires_grad_(True)
        return model
