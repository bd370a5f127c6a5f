"""Save, load and merge wrapped models, whatever the strategy.

Formats:
- ``peft``: PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors``, so
  ``peft.PeftModel.from_pretrained`` loads them (lora, ia3, prefix, prompt, any PEFT config).
- ``peftkit``: the trained tensors only (``adapter_model.safetensors``), for adapter and bitfit.
- ``full``: the whole model through ``save_pretrained``.

Every checkpoint also holds ``peftkit_config.json``: strategy, options, task, base model
(with where to find it again: `peftkit.base_source`), labels. A checkpoint is written into a
temporary sibling directory and renamed into place (`peftkit.safe_write`), so an interrupted
save never leaves a half-written checkpoint behind, and a save never replaces files peftkit did
not write. `load` checks every file it reads first and names the damaged one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from . import base_source
from .base_source import BaseModelNotFoundError
from .introspect import auto_class, has_head, is_quantized
from .safe_write import CONFIG_NAME, OverwriteRefusedError, atomic_directory, clean_stale_temporaries
from .strategies import REGISTRY, Strategy, WrapInfo, wrap, wrap_info
from .strategies.base import INFO_ATTR

WEIGHTS_NAME = "adapter_model.safetensors"
__all__ = [
    "BaseModelNotFoundError", "CheckpointError", "OverwriteRefusedError", "atomic_directory",
    "clean_stale_temporaries", "load", "merge", "read_config", "save",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt; the message names the file."""


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


def save(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None, overwrite: bool = True) -> Path:
    """Write what was trained, plus a config naming strategy, options, base model and labels.

    ``path`` must be missing, an empty directory, or a checkpoint peftkit wrote: that one is
    replaced, and any file in it that peftkit did not write is kept in the new checkpoint.
    Anything else (a file, a directory of other files) raises `OverwriteRefusedError`, as does
    any existing checkpoint with ``overwrite=False``.
    """
    info = _require_info(model)
    config = getattr(model, "config", None)
    meta = {
        **info.to_dict(),
        "base_model_source": base_source.describe(info.base_model),
        "quantization": _quantization(model),
        "num_labels": getattr(config, "num_labels", None) if has_head(info.task) else None,
        "id2label": {str(k): v for k, v in (getattr(config, "id2label", None) or {}).items()},
    }
    with atomic_directory(path, overwrite=overwrite) as tmp:
        if info.format in ("peft", "full"):
            model.save_pretrained(tmp)
        else:
            spec = REGISTRY.get(info.strategy, Strategy())
            tensors, meta["options"] = spec.checkpoint_state(model, info.options)
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(path)


def _damaged(file: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"{file} is damaged ({type(err).__name__}: {err}); the checkpoint was truncated or corrupted "
        "(an interrupted copy, a full disk). Copy or save it again."
    )


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``peftkit_config.json`` of a checkpoint directory."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: {path} is not a peftkit checkpoint (peftkit.save writes one). "
            "A plain PEFT adapter loads with peft.PeftModel.from_pretrained."
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise _damaged(file, err) from err
    if not isinstance(meta, dict) or not isinstance(meta.get("strategy"), str) or "format" not in meta:
        raise CheckpointError(f"{file} is damaged: it lacks the 'strategy' and 'format' entries peftkit.save writes.")
    return meta


def _check_files(path: Path, fmt: str) -> None:
    """Open every file `load` reads (JSON parsed, safetensors headers checked against the file size)."""
    from safetensors import safe_open

    if fmt == "full":
        json_files, tensor_files = ["config.json"], sorted(p.name for p in path.glob("model*.safetensors"))
    else:
        json_files, tensor_files = (["adapter_config.json"] if fmt == "peft" else []), [WEIGHTS_NAME]
    if fmt == "peft" and not (path / WEIGHTS_NAME).is_file() and (path / "adapter_model.bin").is_file():
        tensor_files = []  # a PEFT adapter saved with safe_serialization=False
    for name in json_files + tensor_files:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing: the checkpoint {path} is incomplete. Copy or save it again.")
        try:
            if name in json_files:
                json.loads(file.read_text(encoding="utf-8"))
            else:
                with safe_open(str(file), "pt"):
                    pass
        except Exception as err:  # SafetensorError has no importable base class but Exception
            raise _damaged(file, err) from err


def checkpoint_labels(meta: dict[str, Any]) -> list[str] | None:
    """The label names a checkpoint's ``peftkit_config.json`` records, in id order (a missing name is
    its id); None for a checkpoint without a classification head."""
    id2label, n = meta.get("id2label") or {}, meta.get("num_labels")
    if not n:
        return None
    return [id2label.get(str(i), str(i)) for i in range(n)]


def _load_base(name: str, meta: dict[str, Any], checkpoint: Path, given: bool) -> nn.Module:
    labels = checkpoint_labels(meta)
    try:
        if meta.get("quantization"):
            from .loading import load_model

            return load_model(name, task=meta["task"], labels=labels, quantization=meta["quantization"])[0]
        from .tasks import task_class

        kwargs = dict(task_class(meta["task"]).model_config)  # e.g. a multi-label head's problem_type
        if labels:
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
        return auto_class(meta["task"]).from_pretrained(name, **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        whose = "The base model you passed" if given else f"The base model recorded in {checkpoint / CONFIG_NAME}"
        raise BaseModelNotFoundError(
            f"{whose}, {name!r}, could not be loaded ({first}). {base_source.hint(checkpoint)}"
        ) from err


_REPORT_ROW = re.compile(r"^\s*(\S+)\s*\|\s*MISSING\b", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _HeldReports(logging.Filter):
    """Holds back transformers' LOAD REPORT records (the head is restored right after)."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True


@contextmanager
def _quiet_base_loading() -> Iterator[_HeldReports]:
    """Hold transformers' load report and drop PEFT's `is_gradient_checkpointing` FutureWarning."""
    logger = logging.getLogger("transformers.modeling_utils")
    held = _HeldReports()
    logger.addFilter(held)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            yield held
    finally:
        logger.removeFilter(held)


def _release_reports(held: _HeldReports, restored: set[str]) -> None:
    """Show a held report again when it names a missing weight the checkpoint did not restore."""
    logger = logging.getLogger("transformers.modeling_utils")
    for record in held.records:
        missing = _REPORT_ROW.findall(_ANSI.sub("", record.getMessage()))
        if not missing or not restored.issuperset(missing):
            logger.handle(record)


def base_model_name(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> str:
    """Where the base model of checkpoint ``path`` loads from: its hub id, or its local folder (where it
    was, else a folder of the same name and content next to the checkpoint); see `load`."""
    path = Path(path)
    return base_source.resolve(meta if meta is not None else read_config(path), path)


def load_base_model(name: str, meta: dict[str, Any], checkpoint: str | os.PathLike) -> nn.Module:
    """The base model ``name`` for a checkpoint's config ``meta`` (its task, labels and quantization),
    loaded without transformers' report of the head the checkpoint restores afterwards."""
    with _quiet_base_loading():
        return _load_base(name, meta, Path(checkpoint), given=True)


def load(path: str | os.PathLike, base_model: nn.Module | str | None = None, trainable: bool = False) -> nn.Module:
    """Rebuild a wrapped model from a checkpoint written by `save`.

    ``base_model`` is a model object or a path / hub id; when None, the base model recorded in
    the checkpoint is loaded (its hub id, or its local folder: where it was, else a folder of
    the same name and content next to the checkpoint). ``trainable=True`` keeps the trained
    parameters trainable (to go on training); otherwise the model is ready for inference.
    Damaged files raise `CheckpointError`, a base that cannot be found `BaseModelNotFoundError`.
    """
    path = Path(path)
    meta = read_config(path)
    _check_files(path, meta["format"])
    info = WrapInfo(meta["strategy"], meta.get("options", {}), meta.get("task"), meta.get("base_model"), meta["format"])
    if info.format == "full":
        model = auto_class(info.task).from_pretrained(path)
        model.requires_grad_(trainable)
        setattr(model, INFO_ATTR, info)
        return model
    source = base_source.recorded(meta)
    if isinstance(base_model, nn.Module):
        own_name = getattr(getattr(base_model, "config", None), "_name_or_path", None)
        base_source.check(own_name, source, path)
        info.base_model = own_name or info.base_model
    with _quiet_base_loading() as held:
        if not isinstance(base_model, nn.Module):
            given = base_model is not None
            name = os.fspath(base_model) if given else base_source.resolve(meta, path)
            if given:
                base_source.check(name, source, path)
            base_model = _load_base(name, meta, path, given)
            info.base_model = os.path.abspath(name) if os.path.isdir(name) else name
        model, restored = _attach(base_model, path, info, trainable)
    _release_reports(held, restored)
    setattr(model, INFO_ATTR, info)
    spec = REGISTRY.get(info.strategy)
    if spec is not None:
        spec.on_load(model)
    return model


def _attach(base_model: nn.Module, path: Path, info: WrapInfo, trainable: bool) -> tuple[nn.Module, set[str]]:
    """(the checkpoint's trained part on top of ``base_model``, the base weights it restored)."""
    if info.format == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(base_model, path, is_trainable=trainable)
        restored = {re.sub(r"^base_model\.(model\.)?", "", n).replace(".modules_to_save.default.", ".")
                    for n, _ in model.named_parameters() if ".modules_to_save.default." in n}
        return model, restored
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
    return model, set(tensors)


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
