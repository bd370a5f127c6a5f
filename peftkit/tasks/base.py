"""The Task interface the training loop relies on, and helpers the tasks share.

A task turns a `peftkit.data.load_data` DatasetDict into model inputs (``prepare``), pads a
list of examples into a batch (``collator``), runs one evaluation step (``eval_step``: tensors
whose first dim is the batch; a second dim, if any, padded with -100 across processes by the
trainer) and turns everything gathered into metrics (``compute_metrics``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


class Task:
    """Base class: ``name``, ``main_metric``, ``greater_is_better`` and the four steps."""

    name: str = ""
    main_metric: str = ""
    greater_is_better: bool = True
    labels_are_classes: bool = False  # "labels" hold class ids (not generated tokens)
    next_token_labels: bool = False  # the logits at position i predict label i+1 (causal LM)

    def chance_loss(self, prepared) -> float | None:
        """The loss of always predicting a prepared training split's label frequencies (their
        entropy), for the warning that a run learned nothing; None where that means nothing."""
        if not self.labels_are_classes or "labels" not in prepared.column_names:
            return None
        from ..runreport import chance_loss

        return chance_loss(prepared["labels"])

    def prepare(self, data, tokenizer, max_length: int = 128):
        """Tokenized splits holding only model inputs and "labels" (unpadded)."""
        raise NotImplementedError

    def collator(self, tokenizer):
        """A callable padding a list of prepared examples into a dict of tensors."""
        return PadCollator(pad_token_id(tokenizer))

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors to gather for one batch (first dim = batch)."""
        raise NotImplementedError

    def compute_metrics(self, gathered: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics from the gathered outputs of every ``eval_step``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, main_metric={self.main_metric!r})"


def pad_token_id(tokenizer) -> int:
    """The id to pad input_ids with: the pad token, else eos, else 0 (padding is masked anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


class PadCollator:
    """Right-pads list-valued fields of a batch to the longest example: input_ids with the pad id,
    labels with -100, everything else (attention_mask, token_type_ids, ...) with 0. Scalar fields
    (a class label) become a 1-D tensor."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def pad_value(self, key: str) -> int:
        return {"input_ids": self.pad_id, "labels": IGNORE_INDEX}.get(key, 0)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        batch = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if isinstance(values[0], (list, tuple, np.ndarray, torch.Tensor)):
                width = max(len(v) for v in values)
                fill = self.pad_value(key)
                values = [list(v) + [fill] * (width - len(v)) for v in values]
            batch[key] = torch.tensor(values, dtype=torch.long)
        return batch


def model_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without "labels", on the model's device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = None
    return {k: (v.to(device) if device is not None and v.device != device else v) for k, v in batch.items() if k != "labels"}


def align_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Drop leading positions a prompt-learning model (prompt tuning, p-tuning) prepends."""
    extra = logits.shape[1] - labels.shape[1]
    return logits[:, extra:] if extra > 0 else logits


def tokenized(data, fn, desc: str):
    """``fn`` mapped (batched) over every split, keeping only what ``fn`` returns."""
    from datasets import DatasetDict

    return DatasetDict({split: ds.map(fn, batched=True, remove_columns=ds.column_names, desc=desc) for split, ds in data.items()})


@functools.cache
def cached_metric(name: str):
    """One in-memory instance per metric per process (loading a module costs ~0.1-1 s)."""
    from ..metrics import load_metric

    return load_metric(name, keep_in_memory=True)


def check_gathered(gathered: dict[str, np.ndarray], *keys: str) -> None:
    missing = [k for k in keys if k not in gathered]
    if missing:
        raise KeyError(f"compute_metrics needs {missing} from eval_step; got {sorted(gathered)}.")
    if len(gathered[keys[0]]) == 0:
        raise ValueError("No evaluation examples to compute metrics on.")
