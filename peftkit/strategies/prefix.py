"""Prefix tuning (Li & Liang 2021): PEFT's for language models, ours (`native_prefix`) elsewhere.

PEFT's prefix tuning passes the prefixes as ``past_key_values``: it works for causal and
seq2seq language models whose attention takes a cache, and nowhere else (encoders, and the
classification heads of transformers 5, take no cache). ``implementation="auto"`` uses PEFT's
for language-model tasks, and ours when PEFT's cannot run or the task is a classification;
the choice is recorded in the wrapped model's options, so a checkpoint reloads the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel, PrefixTuningConfig
from torch import nn

from ..introspect import backbone, head_module_names, is_quantized, position_limit, trainable_state
from . import native_prefix
from ._peft import apply_peft, heads_to_save, probe_token_ids, prompt_learning_dims, task_type
from .base import Strategy, freeze, unfreeze_heads
from .options import Choice, Flag, Integer, Modules

NOT_MERGEABLE = (
    "{name} adds virtual tokens in front of every input; there is no weight to fold them "
    "into. Keep the adapter (peftkit.save / peftkit.load), or train with 'lora' or 'ia3' if you need a merged model."
)
IMPLEMENTATIONS = ("auto", "native", "peft")


class PrefixTuning(Strategy):
    name = "prefix"
    summary = "trainable key/value prefixes in every self-attention layer (PEFT's for LMs, else ours)"
    options = {
        "num_virtual_tokens": 20,
        "prefix_projection": False,
        "implementation": "auto",
        "modules_to_save": "auto",
    }
    option_rules = {
        "num_virtual_tokens": Integer(1),
        "prefix_projection": Flag(),
        "implementation": Choice(IMPLEMENTATIONS),
        "modules_to_save": Modules(optional=True),
    }
    checkpoint_format = "peftkit"  # ours; PEFT's prefix is saved in PEFT's format (see `record`)
    plan_rank = 70
    merge_refusal = NOT_MERGEABLE.format(name="Prefix tuning")
    default_lr = 1e-2

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        chosen = o["implementation"]
        if chosen == "peft" or (chosen == "auto" and _generates(task)):
            config = PrefixTuningConfig(
                task_type=task_type(task),
                num_virtual_tokens=o["num_virtual_tokens"],
                prefix_projection=o["prefix_projection"],
                modules_to_save=heads_to_save(model, o["modules_to_save"]),
                **prompt_learning_dims(model),
            )
            try:
                return apply_peft(model, config, "prefix tuning", probe=True)
            except ValueError:
                if chosen == "peft":
                    raise
        return self._apply_native(model, o)

    def _apply_native(self, model: nn.Module, o: dict[str, Any]) -> nn.Module:
        n = o["num_virtual_tokens"]
        native_prefix.route_attention(model)
        states = _self_attention_states(model, n)
        freeze(model)
        native_prefix.add_prefixes(model, states, n, o["prefix_projection"])
        heads = (
            head_module_names(model) if o["modules_to_save"] == "auto" else list(o["modules_to_save"] or [])
        )
        unfreeze_heads(model, heads)
        return model

    def record(self, model: nn.Module, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if isinstance(model, PeftModel):
            return {**options, "implementation": "peft"}, "peft"
        return {**options, "implementation": "native"}, "peftkit"

    def checkpoint_state(
        self, model: nn.Module, options: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The prefixes as plain tensors: a reparameterization MLP stays behind (it only helps training)."""
        state = {
            n: t
            for n, t in trainable_state(model).items()
            if not n.startswith(native_prefix.ENCODER_ATTR + ".")
        }
        return {**state, **native_prefix.saved_prefix_state(model)}, {**options, "prefix_projection": False}


def _self_attention_states(model: nn.Module, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`native_prefix.self_attention_states` of a probe through the backbone. A quantized model on the
    meta device (the planner's) cannot run its quantized layers: an unquantized twin of it is probed
    instead (quantization changes no attention shape)."""
    try:
        return _probe(model, n)
    except Exception:  # bitsandbytes raises several kinds on meta tensors
        if not (is_quantized(model) and any(p.is_meta for p in model.parameters())):
            raise
    with torch.device("meta"):
        twin = type(model)(model.config)
    native_prefix.route_attention(twin)  # hooks, where its attention is its own code
    return _probe(twin, n)


def _probe(model: nn.Module, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    batch = _probe_batch(model, n)
    try:
        return native_prefix.self_attention_states(model, batch, through=backbone(model))
    except RuntimeError:
        # On the meta device a model whose attention is its own code may build its mask by arithmetic
        # from a 2-D one (DeBERTa-v2), which a 4-D one breaks: meta tensors lack the values, not the shapes.
        mask = batch.get("attention_mask")
        if mask is None or mask.dim() == 2 or not mask.is_meta:
            raise
        batch = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
        return native_prefix.self_attention_states(model, batch, through=backbone(model))


def _probe_batch(model: nn.Module, n: int) -> dict[str, torch.Tensor]:
    """Up to ``n`` real token ids for the probe (a decoder gets one more, to tell its cross-attention
    apart: there the keys are as long as the encoder's input, not as the queries).

    A model on the meta device (the planner's) gets 4-D masks, which transformers uses as given (the
    masks it builds look at the values, which meta tensors do not have); an encoder's is left out.
    """
    limit = position_limit(model)
    length = max(1, min(n, limit[0] - 1 if limit else n))
    meta = any(p.is_meta for p in model.parameters())

    def mask(ids: torch.Tensor) -> torch.Tensor:
        if not meta:
            return torch.ones_like(ids)
        return torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device)

    ids = probe_token_ids(model, length)
    if not getattr(model.config, "is_encoder_decoder", False):
        return {"input_ids": ids, "attention_mask": mask(ids)}
    decoder_ids = probe_token_ids(model, length + 1)
    batch = {"input_ids": ids, "decoder_input_ids": decoder_ids, "decoder_attention_mask": mask(decoder_ids)}
    return {**batch, "use_cache": False} if meta else {**batch, "attention_mask": mask(ids)}


def _generates(task) -> bool:
    """Language-modelling tasks (the ones whose models take past_key_values) keep PEFT's prefix tuning."""
    from ..tasks import task_class

    return (task_class(task) if isinstance(task, str) else task).generative
