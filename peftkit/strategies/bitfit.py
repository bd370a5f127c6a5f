"""BitFit (Ben Zaken et al. 2021): only the bias terms, and the task head, train."""

from __future__ import annotations

from torch import nn

from ..introspect import backbone, head_module_names
from .base import Strategy, freeze, unfreeze_heads


class BitFit(Strategy):
    name = "bitfit"
    plan_rank = 50
    summary = "only bias terms (and the task head) train"
    mergeable = True  # the biases live in the model already
    default_lr = 2e-3

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        biases = [p for n, p in backbone(model).named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
        if not biases:
            raise ValueError(
                f"BitFit trains bias terms, and {type(model).__name__} has none in its backbone "
                "(Llama-family and other bias-free architectures): it would train almost nothing. "
                "Use 'lora' or 'ia3' instead."
            )
        freeze(model)
        for p in biases:
            p.requires_grad_(True)
        unfreeze_heads(model, head_module_names(model))
        return model
