"""Save, load and merge wrapped models, whatever the strategy.

Formats:
- ``peft``: PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors``, so
  ``peft.PeftModel.from_pretrained`` loads them (lora, ia3, prefix, prompt, any PEFT config).
- ``peftkit``: the trained tensors only (``adapter_model.safetensors``), for adapter and bitfit.
- ``full``: the whole model through ``save_pretrained``.

Every checkpoint also holds ``peftkit_config.json``: strategy, options, task, base model,
labels. A checkpoint is written into a temporary sibling directory and renamed into place,
so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from .introspect import auto_class, is_quantized, trainable_state
from .strategies import REGISTRY, WrapInfo, wrap, wrap_info
from .strategies.base import INFO_ATTR

CONFIG_NAME = "peftkit_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _require_info(model: nn.Module) -> WrapInfo:
    info = wrap_info(model)
    if info is None:
        raise ValueError(
            "This model was not wrapped by peftkit.wrap, so peftkit does not know what trained. "
            "Call peftkit.wrap(model, strategy) before training, or use model.save_pretrained "
            "for a plain transformers model."
        )
    return info


def _quantization(model: nn.Module) -> str | None:
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    return None


def save(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write what was trained, plus a config naming strategy, options and base model."""
    info = _require_info(model)
    config = getattr(model, "config", None)
    meta = {
        **info.to_dict(),
        "quantization": _quantization(model),
        "num_labels": getattr(config, "num_labels", None) if info.task in ("classification", "token-classification") else None,
        "id2label": {str(k): v for k, v in (getattr(config, "id2label", None) or {}).items()},
    }
    with atomic_directory(path) as tmp:
        if info.format == "peft":
            model.save_pretrained(tmp)
        elif info.format == "full":
            model.save_pretrained(tmp)
        else:
            save_file(trainable_state(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``peftkit_config.json`` of a checkpoint directory."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: {path} is not a peftkit checkpoint (peftkit.save writes one). "
            "A plain PEFT adapter loads with peft.PeftModel.from_pretrained."
        )
    return json.loads(file.read_text())


def _load_base(meta: dict[str, Any]) -> nn.Module:
    name = meta.get("base_model")
    if not name:
        raise ValueError(
            "The checkpoint does not name its base model (it was built from a config, not "
            "loaded from a path or hub id). Pass base_model=<the same base model>."
        )
    labels = None
    if meta.get("id2label") and meta.get("num_labels"):
        labels = [meta["id2label"][str(i)] for i in range(meta["num_labels"])]
    if meta.get("quantization"):
        from .loading import load_model

        model, _ = load_model(name, task=meta["task"], labels=labels, quantization=meta["quantization"])
        return model
    kwargs = {}
    if labels:
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {v: i for i, v in enumerate(labels)}}
    return auto_class(meta["task"]).from_pretrained(name, **kwargs)


def load(path: str | os.PathLike, base_model: nn.Module | str | None = None, trainable: bool = False) -> nn.Module:
    """Rebuild a wrapped model from a checkpoint written by `save`.

    ``base_model`` is a model object or a path / hub id; when None, the base model named in
    the checkpoint is loaded. ``trainable=True`` keeps the trained parameters trainable (to go
    on training); otherwise the model is ready for inference.
    """
    path = Path(path)
    meta = read_config(path)
    info = WrapInfo(meta["strategy"], meta.get("options", {}), meta.get("task"), meta.get("base_model"), meta["format"])
    if info.format == "full":
        model = auto_class(info.task).from_pretrained(path)
        model.requires_grad_(trainable)
        setattr(model, INFO_ATTR, info)
        return model
    if isinstance(base_model, (str, os.PathLike)):
        base_model = _load_base({**meta, "base_model": str(base_model)})
    elif base_model is None:
        base_model = _load_base(meta)
    if info.format == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(base_model, path, is_trainable=trainable)
    else:
        model = wrap(base_model, info.strategy, task=info.task, **info.options)
        tensors = load_file(str(path / WEIGHTS_NAME))
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        if missing or unexpected:
            raise ValueError(
                f"Checkpoint {path} does not fit this base model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}. Pass the base model the checkpoint was trained on."
            )
        model.load_state_dict(tensors, strict=False)
        if not trainable:
            model.requires_grad_(False)
    setattr(model, INFO_ATTR, info)
    return model


def merge(model: nn.Module) -> nn.Module:
    """A plain transformers model with the trained update folded into its weights.

    LoRA and IA3 fold into the weights they adapt; BitFit and full fine-tuning already live in
    the model's own weights. Adapters, prefix and prompt tuning add computation that no weight
    can absorb, and raise a ValueError saying so.
    """
    info = _require_info(model)
    spec = REGISTRY.get(info.strategy)
    if spec is not None and not spec.mergeable:
        raise ValueError(f"Cannot merge a {info.strategy!r} model: {spec.merge_refusal}")
    if info.format != "peft":  # full, bitfit: nothing to fold
        delattr(model, INFO_ATTR)
        return model
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"Cannot merge a {info.strategy!r} model: PEFT offers no merge for this method.")
    _unwrap_saved_modules(model)
    if not is_quantized(model):
        return model.merge_and_unload()
    from .loading import dequantize_model

    warnings.warn(
        "Merging into a quantized base: PEFT dequantizes each layer, adds the update and "
        "re-quantizes it, and peftkit then dequantizes the result, so the merged model is a "
        "full-precision model carrying the quantization error, not the quantized model you "
        "trained (and not bit-identical to it). Keep the adapter for exact results.",
        stacklevel=2,
    )
    return dequantize_model(model.merge_and_unload())


def _unwrap_saved_modules(model: nn.Module) -> None:
    """Put the trained copy of each ``modules_to_save`` module in place of PEFT's wrapper.

    PEFT's IA3 unload trips over wrapped task heads that are not a single Linear (RoBERTa's
    ``RobertaClassificationHead``, BART's ``classification_head``); doing this step first is
    what LoRA's unload does anyway.
    """
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            trained = module.modules_to_save[module.active_adapters[0]]
            setattr(model.get_submodule(parent_name) if parent_name else model, child, trained)
