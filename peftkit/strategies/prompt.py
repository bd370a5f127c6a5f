"""Prompt tuning (Lester et al. 2021) through PEFT: trainable virtual tokens before the input embeddings.

For token classification PEFT puts the virtual tokens' positions into the logits while the
labels cover the input only, and the loss fails. Two hooks on the PEFT model fix it (put back by
`on_load` on a reloaded one): the labels get ``-100`` (ignored) for the virtual positions, and
the logits lose them, so they keep the input's length as every other strategy's do.

Classification heads that find their token from ``input_ids`` get them back: the decoders' last
real token (GPT-2, Llama), and the encoder-decoders' last eos (BART, T5), whose heads refuse to run
on ``inputs_embeds`` alone.
"""

from __future__ import annotations

import inspect

import torch
from peft import PromptTuningConfig
from torch import nn

from ..introspect import head_module_names
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
        if getattr(model, _HOOKED, False) or config is None:
            return
        setattr(model, _HOOKED, True)
        if config.task_type == "TOKEN_CLS":
            model.register_forward_pre_hook(_pad_labels, with_kwargs=True)
            model.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
        elif config.task_type == "SEQ_CLS":
            base = model.get_base_model()
            if _pools_last_token(base):
                _pool_last_attended(base)
            elif _reads_eos_of_input_ids(base):
                _pass_input_ids_along(model, base)


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


def _pools_last_token(model: nn.Module) -> bool:
    """Whether a classifier reads the last non-padding token, found from ``input_ids`` (GPT-2, Llama and
    the other decoders' ``*ForSequenceClassification``): given only ``inputs_embeds``, as under prompt
    tuning, it reads the last position, a padding one in a right-padded batch."""
    try:
        return "last_non_pad_token" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False


def _pool_last_attended(model: nn.Module) -> None:
    """Make the head's last position hold the logits of each row's last attended one (the mask is
    read off the model's own call), so that the classifier pools the last real token again."""
    heads = head_module_names(model)
    if len(heads) != 1:
        return
    seen: dict[str, torch.Tensor | None] = {}

    def remember_mask(module, args, kwargs):
        seen["mask"] = kwargs.get("attention_mask")

    def last_attended_to_end(module, args, logits):
        mask = seen.get("mask")
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or mask is None or mask.dim() != 2:
            return logits
        if mask.shape[1] != logits.shape[1]:
            return logits
        positions = torch.arange(mask.shape[1], device=logits.device)
        last = (positions * mask.to(logits.device).bool()).argmax(-1)
        pooled = logits[torch.arange(logits.shape[0], device=logits.device), last]
        return torch.cat([logits[:, :-1], pooled[:, None]], dim=1)

    model.register_forward_pre_hook(remember_mask, with_kwargs=True)
    model.get_submodule(heads[0]).register_forward_hook(last_attended_to_end)


def _reads_eos_of_input_ids(model: nn.Module) -> bool:
    """Whether an encoder-decoder classifier pools the decoder state at the last eos of ``input_ids``
    (BART, mBART, T5 and their copies): it refuses ``inputs_embeds`` without ``input_ids``."""
    if not getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        return "input_ids.eq(" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False


def _pass_input_ids_along(peft_model: nn.Module, model: nn.Module) -> None:
    """Give the head the token ids PEFT replaced by embeddings (virtual tokens in front), and keep them
    from the encoder, which takes the embeddings. The head then finds its eos, and the decoder reads
    the input shifted right, as without prompt tuning: the virtual tokens reach it through the
    encoder (cross-attention), as they do for a sequence-to-sequence LM."""
    seen: dict[str, torch.Tensor | None] = {}

    def remember_ids(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def give_ids(module, args, kwargs):
        if not args and kwargs.get("input_ids") is None and kwargs.get("inputs_embeds") is not None:
            kwargs["input_ids"] = seen.get("ids")
        return args, kwargs

    def embeddings_only(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            kwargs["input_ids"] = None
        return args, kwargs

    peft_model.register_forward_pre_hook(remember_ids, with_kwargs=True)
    model.register_forward_pre_hook(give_ids, with_kwargs=True)
    model.get_encoder().register_forward_pre_hook(embeddings_only, with_kwargs=True)
