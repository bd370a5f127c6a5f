"""load_model: any model for a task, in full precision or bitsandbytes 8-bit / 4-bit, ready to wrap.

Quantized loading follows QLoRA (Dettmers et al. 2023): NF4 with double quantization, a
float compute dtype, task heads and output embeddings kept in full precision, every base
weight frozen and the model made ready for k-bit training (float32 norms, input gradients for
activation checkpointing).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from .introspect import auto_class, check_task, head_module_names

QUANTIZATIONS = (None, "8bit", "4bit")
_LABEL_TASKS = ("classification", "token-classification")
_INSTALL_BNB = 'pip install "bitsandbytes>=0.50"'


def _check_quantization(quantization: str | None) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}. Valid values: None, '8bit', '4bit'.")
    if quantization and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"quantization={quantization!r} needs bitsandbytes. Install it with: {_INSTALL_BNB}")


def _label_kwargs(task: str, num_labels: int | None, labels: list[str] | None) -> dict[str, Any]:
    if labels is not None:
        labels = [str(label) for label in labels]
        if num_labels is not None and num_labels != len(labels):
            raise ValueError(
                f"labels has {len(labels)} names but num_labels={num_labels}; pass one of them, or make them agree."
            )
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {labels}.")
        num_labels = len(labels)
    if num_labels is None:
        return {}
    if task not in _LABEL_TASKS:
        raise ValueError(f"num_labels / labels apply to {' and '.join(_LABEL_TASKS)} models, not {task!r}.")
    names = labels or [f"LABEL_{i}" for i in range(num_labels)]
    return {"num_labels": num_labels, "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _compute_dtype() -> torch.dtype:
    """bfloat16 on a GPU that supports it, float16 on older GPUs, float32 on the CPU."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _modules_kept_in_full_precision(name_or_path: str, task: str, config_kwargs: dict, kwargs: dict) -> list[str]:
    """Task heads and output embeddings, read off the model built on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    hub_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code", "token", "cache_dir") if k in kwargs}
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs, **config_kwargs)
    with init_empty_weights():
        skeleton = auto_class(task).from_config(config)
    keep = head_module_names(skeleton)
    out = skeleton.get_output_embeddings()
    keep += [n for n, m in skeleton.named_modules() if out is not None and m is out]
    return sorted(set(keep))


def quantization_config(quantization: str, keep: list[str]):
    """The bitsandbytes config: NF4 + double quantization, or LLM.int8, with ``keep`` unquantized."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_compute_dtype(),
            llm_int8_skip_modules=keep,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)


def prepare_for_kbit_training(model: nn.Module) -> nn.Module:
    """Freeze the base, keep every non-quantized float in float32, let inputs carry gradients.

    This is PEFT's ``prepare_model_for_kbit_training`` without its use of the deprecated
    ``gradient_checkpointing_enable`` name; activation checkpointing stays a training option
    (``TrainConfig.gradient_checkpointing``), which the input gradients set here make work.
    """
    for param in model.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ == "Parameter":
            param.data = param.data.float()
    model.enable_input_require_grads()
    return model


def _hub_error(name_or_path: str, err: Exception) -> OSError:
    return OSError(
        f"{err}\n\npeftkit could not load {name_or_path!r}. Offline (HF_HUB_OFFLINE=1) or without "
        "access to the hub, pass a local path: a directory holding config.json and the weights "
        "(for example one written by save_pretrained)."
    )


def load_model(
    name_or_path: str,
    task: str = "classification",
    num_labels: int | None = None,
    labels: list[str] | None = None,
    quantization: str | None = None,
    dtype: torch.dtype | str | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load a model and its tokenizer for ``task``, optionally quantized, ready for `peftkit.wrap`.

    ``task``: "classification", "token-classification", "causal-lm" or "seq2seq-lm".
    ``labels``: label names, stored as id2label / label2id in the config.
    ``quantization``: None, "8bit" (LLM.int8) or "4bit" (NF4, double quantization).
    ``dtype``: None picks "auto" on CUDA and float32 on the CPU.
    Other keyword arguments go to ``from_pretrained`` (``gguf_file=...`` loads a GGUF file
    dequantized into a plain, saveable model).
    """
    from transformers import AutoTokenizer

    check_task(task)
    _check_quantization(quantization)
    config_kwargs = _label_kwargs(task, num_labels, labels)
    kwargs = dict(from_pretrained_kwargs)
    if dtype is None:
        dtype = "auto" if torch.cuda.is_available() else torch.float32
    try:
        tokenizer = _load_tokenizer(AutoTokenizer, name_or_path, task, kwargs)
        if quantization:
            keep = _modules_kept_in_full_precision(name_or_path, task, config_kwargs, kwargs)
            kwargs["quantization_config"] = quantization_config(quantization, keep)
            if quantization == "4bit" and dtype == torch.float32 and torch.cuda.is_available():
                dtype = _compute_dtype()
        model = auto_class(task).from_pretrained(name_or_path, dtype=dtype, **config_kwargs, **kwargs)
    except OSError as err:
        raise _hub_error(name_or_path, err) from err
    if "gguf_file" in kwargs:
        _forget_gguf(model)
    _set_pad_token(model, tokenizer)
    if quantization:
        prepare_for_kbit_training(model)
    if quantization == "4bit":
        keep_cpu_4bit_trainable(model)
    return model, tokenizer


def keep_cpu_4bit_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, converts a Linear4bit's weight to an
    inference-only layout on its first forward pass in eval mode and never converts it back;
    a training step after any evaluation then fails ("a view of a leaf Variable that requires
    grad is being used in an in-place operation") or runs a kernel without autograd. Training
    loops evaluate between steps, so peftkit keeps the trainable layout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _load_tokenizer(auto_tokenizer, name_or_path: str, task: str, kwargs: dict):
    tok_kwargs = {k: kwargs[k] for k in ("gguf_file", "revision", "trust_remote_code", "token", "cache_dir") if k in kwargs}
    tokenizer = auto_tokenizer.from_pretrained(name_or_path, **tok_kwargs)
    if task == "token-classification" and hasattr(tokenizer, "add_prefix_space") and not tokenizer.add_prefix_space:
        # Byte-level BPE tokenizers (RoBERTa, GPT-2) need it to take pre-split words.
        tokenizer = auto_tokenizer.from_pretrained(name_or_path, add_prefix_space=True, **tok_kwargs)
    return tokenizer


def _forget_gguf(model: nn.Module) -> None:
    """A GGUF file is dequantized on load, but transformers still flags the model as quantized
    and refuses ``save_pretrained``; the weights are plain tensors, so drop the flag."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
        for module in model.modules():
            if hasattr(module, "config") and getattr(module.config, "_is_quantized", False):
                module.config._is_quantized = False


def _set_pad_token(model: nn.Module, tokenizer) -> None:
    """Decoders often ship without a pad token: reuse eos (or unk), and tell the model."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ValueError("The tokenizer has no pad, eos or unk token to pad with; set tokenizer.pad_token.")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace bitsandbytes 8-bit / 4-bit layers by plain Linear layers in full precision."""
    if getattr(model, "hf_quantizer", None) is None:
        raise ValueError("This model was not loaded quantized by transformers; there is nothing to dequantize.")
    return model.dequantize(dtype=torch.float32 if not torch.cuda.is_available() else None)
