"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), written for transformers 5.

An adapter is a small residual bottleneck, ``h + up(act(down(h)))``, placed after a
sublayer's output projection and before the block's own residual connection and layer norm.
The up-projection starts at zero, so a freshly wrapped model computes exactly what it did.

Placements:
- ``pfeiffer``: one adapter after each feed-forward block.
- ``houlsby``: one after each attention output (self and cross) and one after each
  feed-forward output.

Each adapter has ``2*d*b + b + d`` parameters for width ``d`` and bottleneck
``b = d // reduction_factor``. Adapters hang off the layer they follow as a child module named
``adapter`` and run through a forward hook, so the base model's own parameter names do not
change and its state dict still loads.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..introspect import head_module_names, linear_dims
from ..targets import residual_width, sublayer_outputs
from .base import Strategy, freeze, unfreeze_heads
from .options import Choice, Integer, Modules

PLACEMENTS = ("pfeiffer", "houlsby")
ADAPTER_NAME = "adapter"


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with the up-projection initialised to zero."""

    def __init__(self, width: int, bottleneck: int, activation: str = "relu", dtype=torch.float32):
        super().__init__()
        if activation not in ACT2FN:
            raise ValueError(f"Unknown adapter activation {activation!r}. Choose one of: {', '.join(sorted(ACT2FN))}.")
        self.down = nn.Linear(width, bottleneck, dtype=dtype)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck, width, dtype=dtype)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.to(self.down.weight.dtype)
        return hidden + self.up(self.act(self.down(x))).to(hidden.dtype)


def _after_output(module: nn.Module, inputs, output):
    adapter = getattr(module, ADAPTER_NAME)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def _adapter_dtype(layer: nn.Module) -> torch.dtype:
    """Float dtype for an adapter: the layer's weight dtype, float32 over quantized weights.

    Over an 8-bit / 4-bit layer the adapter trains in float32 whatever the compute dtype
    (bfloat16 on GPUs), as LoRA weights do; `BottleneckAdapter.forward` casts to and fro.
    """
    weight = getattr(layer, "weight", None)
    if weight is None:  # a whole feed-forward module: its first floating parameter
        weight = next((p for p in layer.parameters() if p.is_floating_point()), None)
    dtype = weight.dtype if weight is not None else torch.float32
    return dtype if dtype.is_floating_point else torch.float32


class Adapter(Strategy):
    name = "adapter"
    plan_rank = 30
    summary = "bottleneck adapters after attention and/or feed-forward outputs (ours)"
    options = {"reduction_factor": 16, "placement": "pfeiffer", "activation": "relu", "modules_to_save": "auto"}
    option_rules = {
        "reduction_factor": Integer(1),
        "placement": Choice(PLACEMENTS),
        "activation": Choice(sorted(ACT2FN)),
        "modules_to_save": Modules(optional=True),
    }
    merge_refusal = (
        "Bottleneck adapters add a non-linear layer (down-projection, activation, "
        "up-projection) to the network; it cannot be folded into the existing weights. "
        "Save the adapter with peftkit.save, or train with 'lora' or 'ia3' for a mergeable update."
    )
    default_lr = 1e-3

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        placement, factor = o["placement"], o["reduction_factor"]  # checked by resolve_options
        targets = []
        for sub in sublayer_outputs(model):
            if placement == "houlsby":
                targets.extend(sub.attention)
            if sub.feed_forward:
                targets.append(sub.feed_forward)
        freeze(model)
        for name in targets:
            layer = model.get_submodule(name)
            dims = linear_dims(layer)
            width = dims[1] if dims else residual_width(model)  # after a whole mixture of experts
            adapter = BottleneckAdapter(width, max(1, width // factor), o["activation"], _adapter_dtype(layer))
            adapter.to(next(layer.parameters()).device)
            layer.add_module(ADAPTER_NAME, adapter)
            layer.register_forward_hook(_after_output)
        heads = head_module_names(model) if o["modules_to_save"] == "auto" else list(o["modules_to_save"] or [])
        unfreeze_heads(model, heads)
        return model


def adapter_parameter_count(width: int, reduction_factor: int = 16) -> int:
    """Parameters in one adapter of width ``d``: ``2*d*b + b + d`` with ``b = d // factor``."""
    b = max(1, width // reduction_factor)
    return 2 * width * b + b + width
