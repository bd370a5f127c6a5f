"""Shared plumbing for the strategies PEFT owns (LoRA, IA3, prefix and prompt tuning)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from peft import PeftConfig, get_peft_model
from torch import nn

from ..introspect import PEFT_TASK_TYPES, head_module_names, linear_dims


def heads_to_save(model: nn.Module, given: Any) -> list[str] | None:
    """``modules_to_save``: the detected task head for "auto", else what the user gave."""
    if given == "auto":
        return head_module_names(model) or None
    return list(given) if given else None


def has_conv1d(model: nn.Module, targets: list[str] | str) -> bool:
    """True when a target names a GPT-2 style Conv1D (weights stored transposed).

    ``targets`` is a list of name suffixes, or a string as PEFT reads it: ``"all-linear"`` or a
    regular expression that must match a full module name.
    """

    def targeted(name: str) -> bool:
        if targets == "all-linear":
            return True
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == t or name.endswith("." + t) for t in targets)

    return any(type(m).__name__ == "Conv1D" and linear_dims(m) and targeted(n) for n, m in model.named_modules())


_PEFT_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError, RuntimeError)


def _cannot_apply(model: nn.Module, method: str, err: Exception) -> ValueError:
    arch = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    others = "'prefix', 'lora' or 'ia3'" if method == "prompt tuning" else "'lora' or 'ia3'"
    return ValueError(
        f"PEFT cannot apply {method} to {arch} (model_type {model_type!r}): {str(err).rstrip('.')}. "
        f"Try strategy {others} on this architecture."
    )


def apply_peft(model: nn.Module, config: PeftConfig, method: str, probe: bool = False) -> nn.Module:
    """`get_peft_model` with PEFT's architecture errors turned into one that names the model.

    With ``probe``, a two-token forward pass runs right away: prompt-learning methods fail
    only inside ``forward`` on architectures they do not fit (no ``past_key_values``, no
    ``inputs_embeds``, grouped key/value heads), and that is better said at wrap time.
    """
    try:
        with warnings.catch_warnings():
            # PEFT reads transformers' deprecated `is_gradient_checkpointing` on every wrap.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = get_peft_model(model, config)
    except _PEFT_ERRORS as err:
        raise _cannot_apply(model, method, err) from err
    if probe:
        check_forward(wrapped, method)
    return wrapped


def check_forward(wrapped: nn.Module, method: str) -> None:
    """A two-token forward pass of a PEFT model (skipped on the meta device), PEFT's errors named."""
    base = wrapped.get_base_model()
    if any(p.is_meta for p in base.parameters()):
        return
    try:
        _probe_forward(wrapped, wrapped.active_peft_config.task_type)
    except _PEFT_ERRORS as err:
        raise _cannot_apply(base, method, err) from err


def probe_token_ids(model: nn.Module, length: int) -> torch.Tensor:
    """``(1, length)`` token ids every embedding row of ``model`` can look up, ending with its eos.

    Read off the input embeddings, not the config: a config's ``eos_token_id`` (GPT-2's 50256) may
    lie outside a small vocabulary. The last id is eos where it fits (BART's classification head
    reads the eos position); the others are fixed draws over the vocabulary, in the model's device.
    """
    embeddings = model.get_input_embeddings()
    vocab = embeddings.num_embeddings
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    config = getattr(model, "config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int) and 0 <= eos < vocab:
        ids[:, -1] = eos
    return ids.to(embeddings.weight.device)


def _probe_forward(model: nn.Module, peft_task: str) -> None:
    ids = probe_token_ids(model.get_base_model(), 2)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if peft_task == "SEQ_2_SEQ_LM":
        batch["labels"] = ids
    elif peft_task == "TOKEN_CLS":
        batch["labels"] = torch.zeros_like(ids)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train(was_training)


def prompt_learning_dims(model: nn.Module) -> dict[str, int]:
    """token_dim / num_layers / num_attention_heads where PEFT cannot read them from the config.

    PEFT looks for ``hidden_size``, ``n_embd`` or ``d_model`` (and similar names for layers and
    heads); configs that spell them otherwise (DistilBERT's ``dim``, ``n_layers``, ``n_heads``)
    get them from the model itself.
    """
    cfg = model.config.to_dict()
    dims: dict[str, int] = {}
    if not {"hidden_size", "n_embd", "d_model"} & cfg.keys():
        dims["token_dim"] = model.get_input_embeddings().embedding_dim
    if not {"num_hidden_layers", "num_layers", "n_layer"} & cfg.keys() and "n_layers" in cfg:
        dims["num_layers"] = cfg["n_layers"]
    if not {"num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"} & cfg.keys() and "n_heads" in cfg:
        dims["num_attention_heads"] = cfg["n_heads"]
    return dims


def task_type(task: str) -> str:
    return PEFT_TASK_TYPES[task]
