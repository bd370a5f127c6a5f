"""What a benchmark cell and the baselines share: the device, imports done before the idle
baseline, the suite's model (a GGUF file's plain copy) and the task's data subsets.

Its own module so that `cell` and `baselines` both import it and not each other.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .suite import Suite, TaskSpec


def resolve_device(suite: Suite) -> str:
    """"cpu" or "cuda" for this run (``auto`` picks CUDA when torch sees a GPU)."""
    import torch

    if suite.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return suite.device


def device_label(device: str) -> str:
    import torch

    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return "cpu"


def preload(quantization: str | None = None, trainer: bool = False) -> None:
    """Import what the cell will need before the idle baseline, so that module memory and import
    time count neither as training memory nor as training time."""
    import accelerate  # noqa: F401
    import evaluate  # noqa: F401
    import peft  # noqa: F401

    if trainer:
        import transformers.trainer  # noqa: F401
    if quantization:
        import bitsandbytes  # noqa: F401


# --------------------------------------------------------------------------- the model


def gguf_cache_dir(suite: Suite) -> Path:
    """Where a suite's GGUF model is kept dequantized ($PEFTKIT_BENCH_CACHE, else ~/.cache/peftkit/bench)."""
    root = Path(os.environ.get("PEFTKIT_BENCH_CACHE") or Path.home() / ".cache" / "peftkit" / "bench")
    return root / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{suite.model.path}-{suite.model.gguf_file}")


def convert_gguf(suite: Suite, task: str = "causal-lm") -> Path:
    """Load the suite's GGUF file once (dequantized) and save it as a plain model folder.

    Every cell then loads the same plain weights, and the quantized cells can quantize them
    (`load_model` cannot quantize straight from a GGUF file).
    """
    from ..checkpoint import atomic_directory
    from ..loading import load_model

    target = gguf_cache_dir(suite)
    if not (target / "config.json").is_file():
        model, tokenizer = load_model(suite.model.resolve(), task=task, gguf_file=suite.model.gguf_file)
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def model_source(suite: Suite) -> tuple[str, dict[str, Any]]:
    """(path, extra load_model kwargs): a GGUF model's plain copy once `convert_gguf` made it."""
    if suite.model.gguf_file:
        target = gguf_cache_dir(suite)
        if (target / "config.json").is_file():
            return str(target), {}
        return suite.model.resolve(), {"gguf_file": suite.model.gguf_file}
    return suite.model.resolve(), {}


# --------------------------------------------------------------------------- data


def _fixed_subset(ds, n: int | None):
    """The same ``n`` rows whatever the cell's seed (a fixed test subset)."""
    import numpy as np

    if n is None or n >= len(ds):
        return ds
    return ds.select(sorted(np.random.default_rng(0).choice(len(ds), size=n, replace=False).tolist()))


def load_task_data(task: TaskSpec, train_size: int | None, seed: int):
    """DatasetDict(train=seeded subset of ``train_size``, test=the test file or its fixed subset)."""
    from datasets import DatasetDict

    from ..data import load_data

    for split in ("train", "test"):
        if not Path(getattr(task, split)).exists():
            raise FileNotFoundError(
                f"The {split} file of task {task.name!r} is missing: {getattr(task, split)}. Set PEFTKIT_DATA_DIR "
                f"to the folder holding the datasets (see ../shared/data/README.md){f' or use the hub id {task.hub_id}' if task.hub_id else ''}."
            )
    # Cells score on test, not validation. A task tuned without a validation file keeps the tuning split
    # (HOLDOUT_FRACTION of train, carved with HOLDOUT_SEED as `peftkit tune` carves it) out of every cell;
    # otherwise load_data carves off a single row instead of 10% of the training file.
    from ..data import _subset
    from .suite import HOLDOUT_FRACTION, HOLDOUT_SEED

    data = load_data(None, task.task, train=task.train, validation=task.validation, test=task.test,
                     seed=HOLDOUT_SEED if task.holdout else seed, max_train_samples=None if task.holdout else train_size,
                     validation_fraction=HOLDOUT_FRACTION if task.holdout else 1e-6, **task.columns)
    if task.holdout:
        data["train"] = _subset(data["train"], train_size, seed)
    test = _fixed_subset(data["test"], task.test_size)
    data = DatasetDict(train=data["train"], test=test)
    if task.prompt_template:
        template = task.prompt_template
        data = data.map(lambda row: {"prompt": template.format(text=row["prompt"])}, desc="peftkit: prompts")
    return data
