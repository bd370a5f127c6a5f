"""Prompt tuning (Lester et al. 2021) through PEFT: trainable virtual tokens before the input embeddings.

For token classification PEFT puts the virtual tokens' positions into the logits while the
labels cover the input only, and the loss fails. Two hooks on the PEFT model fix it (put back by
`on_load` on a reloaded one): the labels get ``-100`` (ignored) for the virtual positions, and
the logits lose them, so they keep the input's length as every other strategy's do.
"""

from __future__ import annotations

import torch
from peft import PromptTuningConfig
from torch import nn

from ._peft import apply_peft, check_forward, heads_to_save, prompt_learning_dims, task_type
from .base import Strategy
from .options import Integer, Modules
from .prefix import NOT_MERGEABLE

_HOOKED = "_peftkit_virtual_positions_hooked"
IGNORE_INDEX = -100  # the label torch's cross-entropy skips


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
            # the virtual tokens live beside the input embeddings, whose width may not be the hidden
            # size (ALBERT factorizes them: 128 wide under a 768-wide model)
            **{**prompt_learning_dims(model), "token_dim": model.get_input_embeddings().embedding_dim},
        )
        wrapped = apply_peft(model, config, "prompt tuning")
        self.on_load(wrapped)
        check_forward(wrapped, "prompt tuning")
        return wrapped

    def on_load(self, model: nn.Module) -> None:
        config = getattr(model, "active_peft_config", None)
        if getattr(config, "task_type", None) == "TOKEN_CLS" and not getattr(model, _HOOKED, False):
            model.register_forward_pre_hook(_pad_labels, with_kwargs=True)
            model.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
            setattr(model, _HOOKED, True)


def _virtual_tokens(model: nn.Module) -> int:
    return model.active_peft_config.num_virtual_tokens


def _pad_labels(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    labels = kwargs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        pad = labels.new_full((labels.shape[0], _virtual_tokens(model)), IGNORE_INDEX)
        kwargs["labels"] = torch.cat([pad, labels], dim=1)
    return args, kwargs


def _drop_virtual_positions(model: nn.Module, args: tuple, kwargs: dict, output):
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor) and logits.dim() == 3:
        output.logits = logits[:, _virtual_tokens(model) :]
    return output
