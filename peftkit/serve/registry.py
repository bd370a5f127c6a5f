"""The adapters a server holds, and how they share base models.

- LoRA-family checkpoints (PEFT format, ``peft_type`` LORA) of one base model, task,
  quantization and head shape share one `peft.PeftModel`: each is added with
  ``load_adapter(path, adapter_name=name)``, so an adapter costs only its own tensors. Such a
  pool runs mixed batches through PEFT's per-sample adapter selection (``adapter_names=``),
  whose rules (peft 0.21, ``tuners/lora``) decide which adapters may mix: eval mode, no
  merged weights, no DoRA, and every ``modules_to_save`` head a Linear/Embedding/Conv layer
  (its outputs are stacked, so heads of one pool must have one shape: hence the head shape
  in the pool key). An adapter that cannot mix runs alone, after ``set_adapter``.
- Every other checkpoint (adapter, bitfit, ia3, prompt, prefix, full) gets a model of its
  own: one more copy of the base model in memory per such adapter.

Only safetensors weights are read. Checkpoints given at start-up are trusted (the operator
named them); those loaded at run time must lie under ``adapter_dir``, every file of them too,
after resolving symlinks, and use a base model already served. A failed load leaves the adapters already served as they were.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("peftkit.serve")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GENERIC_FOLDERS = ("best", "final", "last", "checkpoint")


class AdapterError(Exception):
    """A request about adapters that cannot be honoured; ``status`` is the HTTP status."""

    status = 422
    kind = "invalid_adapter"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class AdapterNotFound(AdapterError):
    status, kind = 404, "adapter_not_found"


@dataclass
class Pool:
    """One PEFT model holding several LoRA adapters of one base (and head shape)."""

    key: tuple
    model: Any
    tokenizer: Any
    names: set[str] = field(default_factory=set)


@dataclass
class Adapter:
    name: str
    path: Path
    strategy: str
    task: str
    labels: list[str] | None
    base: str | None
    model: Any
    tokenizer: Any
    pool: Pool | None = None
    mixable: bool = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "strategy": self.strategy, "task": self.task, "labels": self.labels, "base": self.base}

    def group_key(self) -> tuple:
        """Adapters with equal keys run in one forward pass."""
        return ("pool", id(self.pool)) if self.mixable else ("adapter", self.name)


def default_name(path: str | Path) -> str:
    """An adapter's name from its folder: the folder's own, or its parent's for best/final/..."""
    path = Path(path).resolve()
    return path.parent.name if path.name in GENERIC_FOLDERS and path.parent.name else path.name


def parse_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        return default_name(spec), spec
    return name.strip(), path.strip()


def _same_path(base: str) -> str:
    """A base model's name, absolute when it is a local folder (so one base is one pool)."""
    return str(Path(base).resolve()) if Path(base).is_dir() else str(base)


def _check_safetensors(path: Path, fmt: str) -> None:
    if fmt == "full":
        ok = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
        wanted = "model.safetensors"
    else:
        ok = (path / "adapter_model.safetensors").is_file()
        wanted = "adapter_model.safetensors"
    if not ok:
        raise AdapterError(f"{path} has no {wanted}: peftkit serve reads safetensors weights only "
                           "(re-save the checkpoint with peftkit.save).")


def _mixable(model) -> bool:
    """Whether PEFT can run this pool's heads in a mixed batch (its ModulesToSaveWrapper rule)."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    supported = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return all(isinstance(m.original_module, supported) for m in model.modules() if isinstance(m, ModulesToSaveWrapper))


class Registry:
    """Adapters by name. Not thread-safe by itself: the server calls it from its one model thread."""

    def __init__(self, base: str | None = None, quantization: str | None = None, adapter_dir: str | Path | None = None,
                 device: str = "auto"):
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={device!r}: use auto, cpu or cuda.")
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no GPU: use --device cpu (or auto).")
        self.base, self.quantization, self.device = base and _same_path(base), quantization, device
        self.adapter_dir = Path(adapter_dir).resolve() if adapter_dir else None
        if self.adapter_dir is not None and not self.adapter_dir.is_dir():
            raise ValueError(f"--adapter-dir {adapter_dir}: no such directory.")
        self.adapters: dict[str, Adapter] = {}
        self.pools: dict[tuple, Pool] = {}

    # ------------------------------------------------------------------ lookup

    def get(self, name: str) -> Adapter:
        adapter = self.adapters.get(name)
        if adapter is None:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise AdapterNotFound(f"No adapter named {name!r}; loaded adapters: {known}.")
        return adapter

    def describe(self) -> list[dict[str, Any]]:
        return [a.describe() for a in list(self.adapters.values())]

    # ------------------------------------------------------------------ paths

    def runtime_path(self, path: str) -> Path:
        """``path`` (relative to ``adapter_dir`` or absolute) resolved, checked to stay inside it."""
        if self.adapter_dir is None:
            raise AdapterError("Loading adapters at run time is off: start the server with --adapter-dir DIR.", 403)
        try:
            resolved = (self.adapter_dir / path).resolve()
        except (OSError, RuntimeError, ValueError):
            raise AdapterError(f"{path!r}: not a usable path.", 422) from None
        if not resolved.is_relative_to(self.adapter_dir):
            raise AdapterError(f"{path!r} is not inside the adapter directory: refused.", 403)
        if not resolved.is_dir():
            raise AdapterError(f"{path!r}: no such checkpoint directory in the adapter directory.", 404)
        for file in resolved.rglob("*"):
            if not file.resolve().is_relative_to(self.adapter_dir):
                raise AdapterError(f"{path!r} holds a link leading out of the adapter directory: refused.", 403)
        return resolved

    # ------------------------------------------------------------------ load / unload

    def load(self, name: str, path: str | Path, runtime: bool = False) -> Adapter:
        """Load checkpoint ``path`` as ``name``; ``runtime`` loads must lie under ``adapter_dir``."""
        if not isinstance(name, str) or not NAME.match(name):
            raise AdapterError(f"Adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
        if name in self.adapters:
            raise AdapterError(f"An adapter named {name!r} is already loaded: unload it first (DELETE /v1/adapters/{name}).", 409)
        path = self.runtime_path(str(path)) if runtime else Path(path)
        from ..checkpoint import read_config

        try:
            meta = read_config(path)
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError) as err:
            raise AdapterError(f"{path if not runtime else name}: not a peftkit checkpoint ({type(err).__name__}).") from None
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("format", "strategy", "task")):
            raise AdapterError(f"{name}: peftkit_config.json lacks format/strategy/task: re-save the checkpoint with peftkit.save.")
        fmt = meta["format"]
        _check_safetensors(path, fmt)
        peft_type = None
        if fmt == "peft":
            try:
                peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type")
            except (OSError, json.JSONDecodeError):
                raise AdapterError(f"{name}: the checkpoint's adapter_config.json is missing or not JSON.") from None
        if runtime and fmt != "full":
            self._check_served_base(self._base_name(meta, name, path), name)
        try:
            adapter = self._load_pooled(name, path, meta) if peft_type == "LORA" else self._load_alone(name, path, meta)
        except AdapterError:
            raise
        except Exception as err:  # noqa: BLE001 - any loading failure is the checkpoint's, reported without a traceback
            log.warning("loading adapter %s from %s failed: %s: %s", name, path, type(err).__name__, err)
            raise AdapterError(f"Could not load adapter {name!r}: {type(err).__name__}: {str(err)[:300]}") from None
        self.adapters[name] = adapter
        log.info("adapter %s loaded (%s, %s, %s)", name, adapter.strategy, adapter.task,
                 "shared base, mixed batches" if adapter.mixable else "shared base" if adapter.pool else "own model")
        return adapter

    def unload(self, name: str) -> None:
        adapter = self.get(name)
        del self.adapters[name]
        pool = adapter.pool
        if pool is None:
            return
        pool.names.discard(name)
        if not pool.names:
            del self.pools[pool.key]
            return
        if name in pool.model.active_adapters:
            pool.model.set_adapter(sorted(pool.names)[0])
        pool.model.delete_adapter(name)

    def _base_name(self, meta: dict[str, Any], name: str, path: Path) -> str:
        from ..checkpoint import base_model_name

        if self.base:
            return _same_path(self.base)
        try:
            return _same_path(base_model_name(path, meta))
        except FileNotFoundError:  # recorded, but not found: not a base this server serves either
            return _same_path(meta["base_model"])
        except ValueError as err:
            raise AdapterError(f"{name}: {err} Or start the server with --model BASE.") from None

    def _check_served_base(self, base: str, name: str) -> None:
        """Run-time loads may only use a base model already served (or --model): a checkpoint's
        config must not make the server read models from outside the adapter directory."""
        served = {self.base} | {a.base for a in list(self.adapters.values())}
        if base not in served:
            raise AdapterError(f"{name}: its base model {base!r} is not one this server serves; start the server "
                               "with --model BASE (or an adapter on that base).", 403)

    def _base_model(self, meta: dict[str, Any], base: str, path: Path):
        from ..checkpoint import load_base_model

        return load_base_model(base, {**meta, "quantization": self.quantization or meta.get("quantization")}, path)

    def _place(self, model):
        """``model`` in eval mode on the server's device (quantized models stay where bitsandbytes put them)."""
        import torch

        from ..introspect import is_quantized

        device = self.device if self.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        return (model if is_quantized(model) else model.to(device)).eval()

    def _tokenizer(self, path: Path, base: str | None):
        from transformers import AutoTokenizer

        source = path if (path / "tokenizer_config.json").is_file() else base
        if source is None:
            raise AdapterError(f"{path.name}: no tokenizer in the checkpoint and no base model to take one from.")
        return AutoTokenizer.from_pretrained(source)

    def _load_pooled(self, name: str, path: Path, meta: dict[str, Any]) -> Adapter:
        from ..checkpoint import checkpoint_labels

        base = self._base_name(meta, name, path)
        labels = checkpoint_labels(meta)
        key = (base, meta["task"], self.quantization or meta.get("quantization"), len(labels) if labels else 0)
        pool = self.pools.get(key)
        tokenizer = self._tokenizer(path, base)
        if pool is None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(self._base_model(meta, base, path), str(path), adapter_name=name, is_trainable=False)
            pool = Pool(key, self._place(model), tokenizer)
        else:
            if tokenizer.get_vocab() != pool.tokenizer.get_vocab():
                raise AdapterError(f"{name}: its tokenizer differs from the one its base model is served with.")
            try:
                pool.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            except BaseException:
                if name in pool.model.peft_config:  # undo a half-done load
                    pool.model.delete_adapter(name)
                raise
            pool.model.eval()
        config = pool.model.peft_config[name]
        mixable = not getattr(config, "use_dora", False) and _mixable(pool.model)
        self.pools[key] = pool
        pool.names.add(name)
        return Adapter(name, path, meta["strategy"], meta["task"], labels, base, pool.model, pool.tokenizer, pool, mixable)

    def _load_alone(self, name: str, path: Path, meta: dict[str, Any]) -> Adapter:
        from ..checkpoint import checkpoint_labels, load

        if meta.get("format") == "full":
            model, base = load(path), meta.get("base_model")
        else:
            base = self._base_name(meta, name, path)
            model = load(path, base_model=self._base_model(meta, base, path))
        return Adapter(name, path, meta["strategy"], meta["task"], checkpoint_labels(meta), base, self._place(model), self._tokenizer(path, base))
