"""Read facts off a Transformers model: its task, its task head, its linear layers, its blocks.

Everything here works from the model object itself (class names, module tree, layer shapes),
so it applies to architectures that no table in peftkit lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .tasks import TASKS as _REGISTRY
from .tasks import task_class

TASKS = tuple(_REGISTRY)  # the built-in tasks' names, read off the registry (check_task also knows later ones)


class _PeftTaskTypes(dict):
    """task name -> PEFT TaskType name, read off the registry when asked (tasks registered later included)."""

    def __missing__(self, task: str) -> str:
        return task_class(task).peft_task_type


PEFT_TASK_TYPES = _PeftTaskTypes()


def auto_class(task: str):
    """The transformers Auto class that builds a model for ``task``."""
    import transformers

    return getattr(transformers, task_class(check_task(task)).auto_class)


def check_task(task: str) -> str:
    """Return ``task`` if it is one peftkit knows; raise a ValueError listing the valid ones."""
    if task not in _REGISTRY:
        raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(_REGISTRY)}.")
    return task


def has_head(task: str) -> bool:
    """Whether ``task``'s models carry a new head sized by the label names (classification ones)."""
    return task_class(check_task(task)).has_head


def head_tasks() -> tuple[str, ...]:
    """The tasks whose models carry a new, label-sized head."""
    return tuple(name for name, cls in _REGISTRY.items() if cls.has_head)


def task_of_class_name(name: str, is_encoder_decoder: bool = False, config=None) -> str | None:
    """The task of a model class called ``name`` (e.g. a config's ``architectures`` entry), or None:
    the first registered task that claims it (``config`` tells a multi-label head, an encoder-decoder)."""
    if config is None:
        from types import SimpleNamespace

        config = SimpleNamespace(is_encoder_decoder=is_encoder_decoder)
    for task, cls in _REGISTRY.items():
        if cls.claims(name, config):
            return task
    return None


def infer_task(model: nn.Module) -> str:
    """Work out the task a model was built for from its class (and config for seq2seq models)."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    task = task_of_class_name(name, bool(getattr(config, "is_encoder_decoder", False)), config=config)
    if task is not None:
        return task
    raise ValueError(
        f"Cannot tell the task of {name}: peftkit handles models for {', '.join(_REGISTRY)} "
        "(classes ending in ForSequenceClassification, ForTokenClassification, ForCausalLM, "
        "ForSeq2SeqLM). Load the model with peftkit.load_model(name, task=...) or the matching "
        "transformers AutoModelFor... class."
    )


def backbone(model: nn.Module) -> nn.Module:
    """The base transformer inside a task model (``model.bert``, ``model.model``, ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) else model


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the top-level modules that make up the task head of a classification model.

    These are the model's direct children that hold parameters and are not the backbone:
    ``classifier`` (BERT), ``score`` (GPT-2, Llama), ``pre_classifier`` + ``classifier``
    (DistilBERT), ``classification_head`` (BART, T5) and so on. Language-model heads are not
    returned: they are pretrained (often tied to the embeddings) and stay frozen.
    """
    if not has_head(infer_task(model)):
        return []
    inner = backbone(model)
    return [
        name
        for name, child in model.named_children()
        if child is not inner and any(True for _ in child.parameters())
    ]


def full_precision_modules(model: nn.Module) -> list[str]:
    """The modules a quantized load keeps unquantized: the task head and the output embeddings.

    `load_model` passes them to bitsandbytes; the memory planner builds its quantized skeleton
    with the same list.
    """
    keep = head_module_names(model)
    out = model.get_output_embeddings()
    keep += [n for n, m in model.named_modules() if out is not None and m is out]
    return sorted(set(keep))


def is_quantized(model: nn.Module) -> bool:
    """True when bitsandbytes 4-bit or 8-bit layers hold the model's weights."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    return any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear-like layer, or None for anything else.

    Linear-like: ``nn.Linear`` and its subclasses (bitsandbytes ``Linear4bit`` and
    ``Linear8bitLt`` included) and GPT-2 style ``Conv1D`` (weight stored transposed).
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight.shape[0], module.nf
    return None


def named_linears(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Every Linear-like submodule of ``module`` with its qualified name."""
    for name, sub in module.named_modules(prefix=prefix):
        if linear_dims(sub) is not None:
            yield name, sub


def _is_attention(module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower()


def attention_modules(block: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The outermost attention modules of a block (self- and cross-attention)."""
    found: list[tuple[str, nn.Module]] = []
    for name, sub in block.named_modules(prefix=prefix):
        if _is_attention(sub) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            if any(True for _ in named_linears(sub)):
                found.append((name, sub))
    return found


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated transformer blocks: members of ModuleLists of one class with attention."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, sub in model.named_modules():
        if not isinstance(sub, nn.ModuleList) or len(sub) == 0:
            continue
        if len({type(child) for child in sub}) != 1:
            continue
        if any(name.startswith(f"{b}.") for b, _ in blocks):
            continue
        first = sub[0]
        if any(_is_attention(m) for m in first.modules()):
            blocks.extend((f"{name}.{i}", child) for i, child in enumerate(sub))
    return blocks


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries of parameters that require grad (detached, on the CPU)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


# Config fields that bound the positions a model can read, by the spelling architectures use.
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length", "max_sequence_length")
# A tokenizer's model_max_length at or above this is a "no limit" sentinel (transformers uses int(1e30)).
NO_LIMIT = 10**9


def _prompt_tokens(model: nn.Module) -> int:
    """Virtual tokens a PEFT prompt-learning model (prompt / prefix tuning) puts before every input."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return 0
    config = configs.get(getattr(model, "active_adapter", "default"))
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return int(getattr(config, "num_virtual_tokens", 0) or 0)


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """(most tokens one input may hold, where that number comes from), or None without a limit.

    Read from the config (``max_position_embeddings``, ``n_positions``, ``n_ctx``, ...). Models
    that place tokens by relative position only (T5, DeBERTa without absolute positions) have
    none. RoBERTa-style embeddings count positions from ``padding_idx + 1``, and prompt-learning
    virtual tokens take positions too; both come off the limit.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa(-v2): relative positions only
        return None
    found = next(((f, getattr(config, f)) for f in POSITION_FIELDS if isinstance(getattr(config, f, None), int)), None)
    if found is None or found[1] <= 0:
        return None
    name, limit = found
    source = f"config {name}={limit}"
    positions = next((m for n, m in model.named_modules() if n.endswith("position_embeddings")), None)
    padding = getattr(positions, "padding_idx", None)
    if isinstance(positions, nn.Embedding) and padding is not None and positions.num_embeddings == limit:
        limit -= padding + 1
        source += f", less {padding + 1} (positions start after padding_idx {padding})"
    virtual = _prompt_tokens(model)
    if virtual:
        limit -= virtual
        source += f", less {virtual} virtual tokens"
    return max(1, limit), source


def fit_max_length(model: nn.Module, tokenizer, max_length: int) -> int:
    """``max_length``, clamped with a warning to what the model (and its tokenizer) can read.

    The model's limit is `position_limit`; a tokenizer's ``model_max_length`` lowers it further
    unless it is a "no limit" sentinel (>= `NO_LIMIT`). A model without a position limit (T5) is
    not clamped by its tokenizer: its relative positions take longer inputs.
    """
    found = position_limit(model)
    if found is None:
        return max_length
    limit, source = found
    tokens = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokens, int) and 0 < tokens < min(limit, NO_LIMIT):
        limit, source = tokens, f"the tokenizer's model_max_length={tokens}; {source}"
    if max_length <= limit:
        return max_length
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel: name the model inside
    warnings.warn(
        f"max_length={max_length} is more than {type(base).__name__} can read: {limit} tokens ({source}). "
        f"Using max_length={limit}; pass max_length={limit} or less to silence this warning.",
        stacklevel=2,
    )
    return limit
