"""Record a checkpoint's base model so that a copy of the checkpoint finds it again elsewhere.

``peftkit_config.json`` keeps ``base_model`` (the hub id, or the local folder's absolute path,
as before) and adds ``base_model_source``: the hub id when the base came from the hub (a name
that is not an existing local path), else the folder's absolute path, its folder name and a
cheap content fingerprint (sha256 of config.json without its volatile keys, plus the names and
sizes of the weight files).

A base is found again in this order: the ``base_model`` the caller passes; the recorded hub id
or path; for a recorded local folder that is gone, a folder of the same name next to the
checkpoint (or next to its parent) whose fingerprint matches. A base whose fingerprint differs
from the recorded one only warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
VOLATILE_KEYS = ("transformers_version", "_name_or_path")


class BaseModelNotFoundError(FileNotFoundError):
    """The base model a checkpoint needs cannot be found; pass base_model= / --base-model."""


def fingerprint(folder: str | os.PathLike) -> str | None:
    """sha256 of a model folder's config (volatile keys dropped) and its weight files' names and sizes."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in VOLATILE_KEYS}
    weights = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    digest = hashlib.sha256(json.dumps({"config": config, "weights": weights}, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def _looks_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("~", "./", "../")) or os.path.isdir(name)


def describe(name: str | None) -> dict[str, Any] | None:
    """The ``base_model_source`` record for a base model name or path (None for no name)."""
    if not name:
        return None
    if not _looks_local(name):
        return {"kind": "hub", "id": name}
    path = Path(os.path.abspath(os.path.expanduser(name)))  # the user's path, symbolic links kept
    return {"kind": "local", "path": str(path), "folder_name": path.name, "fingerprint": fingerprint(path)}


def recorded(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's base record; built from the plain ``base_model`` of older checkpoints, and
    from ``base_model`` when a person edited it to name another base than the record does."""
    source = meta.get("base_model_source")
    name = meta.get("base_model")
    if isinstance(source, dict) and source.get("kind") in ("hub", "local"):
        if not name or name == source.get("path" if source["kind"] == "local" else "id"):
            return source
    if not name:
        return None
    if _looks_local(name):
        return {"kind": "local", "path": name, "folder_name": Path(name).name, "fingerprint": None}
    return {"kind": "hub", "id": name}


def hint(checkpoint: Path) -> str:
    return (
        "Pass the base model it was trained on: peftkit.load(checkpoint, base_model=PATH_OR_HUB_ID) in "
        f"Python, or --base-model PATH_OR_HUB_ID on the command line (checkpoint: {checkpoint})."
    )


def resolve(meta: dict[str, Any], checkpoint: Path) -> str:
    """The name or path to load the recorded base from; raises BaseModelNotFoundError naming what was tried."""
    source = recorded(meta)
    if source is None:
        raise ValueError(
            f"The checkpoint {checkpoint} does not name its base model (it was built from a config, not "
            "loaded from a path or hub id). Pass base_model=<the same base model> (CLI: --base-model)."
        )
    if source["kind"] == "hub":
        return source["id"]
    path, expected = source["path"], source.get("fingerprint")
    if os.path.isdir(path):
        check(path, source, checkpoint)
        return path
    tried = [path]
    name = source.get("folder_name")
    if name and expected:
        for parent in (checkpoint.parent, checkpoint.parent.parent):
            candidate = parent / name
            if str(candidate) in tried:
                continue
            tried.append(str(candidate))
            if candidate.is_dir() and fingerprint(candidate) == expected:
                return str(candidate)
    raise BaseModelNotFoundError(
        f"The base model of {checkpoint} was the local folder {path}, which is not there any more. Tried: "
        f"{', '.join(tried)}" + ("" if expected else " (no fingerprint recorded, so no other place was searched)")
        + f". {hint(checkpoint)}"
    )


def check(given: str | os.PathLike | None, source: dict[str, Any] | None, checkpoint: Path) -> None:
    """Warn when a local base folder's fingerprint differs from the one recorded at save time."""
    expected = (source or {}).get("fingerprint")
    if not expected or not given or not os.path.isdir(given):
        return
    actual = fingerprint(given)
    if actual and actual != expected:
        warnings.warn(
            f"The base model {given} differs from the one {checkpoint} was trained on (its config.json or "
            f"weight files changed; trained on {source.get('path')}). The checkpoint is loaded onto it anyway; "
            "its outputs may be wrong if this is not the same model.",
            stacklevel=3,
        )
