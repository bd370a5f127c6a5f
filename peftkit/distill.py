"""Knowledge distillation into any strategy: a teacher's softened logits join the task loss.

``loss = (1 - alpha) * task_loss + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))``

(Hinton et al. 2015; the T**2 keeps the soft term's gradient scale independent of T.) The KL is
taken per example for classification and per token for token classification and causal LM,
averaged over the positions whose label is not ignored (-100); for causal LM the logits at
position i are matched where label i+1 is kept (the task's ``next_token_labels``). It is
computed in chunks of rows (`CHUNK_ELEMENTS` logits at a time, each chunk recomputed in the
backward pass), so that a large vocabulary adds no memory beyond the logits themselves.

The teacher (`TrainConfig.teacher`: a model object, a model directory or hub id, or a peftkit
checkpoint) is put in eval mode with no gradients, on the student's device; its logits are
computed once per batch, in the same forward pass order as the student's, and reused by the
adversarial passes of that batch (`peftkit.adversarial`); nothing is cached to disk, so every
epoch runs the teacher again. Teacher and student must share the label set (classification,
token classification) or the vocabulary size (causal LM): `check_compatible` says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ELEMENTS = 2**22  # logits per KL chunk (16 MiB in float32)


class TeacherRef:
    """A model object held in a `TrainConfig` without being copied: ``dataclasses.asdict`` deep-copies
    field values, and run records print them; both see this reference, not the teacher's weights."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __deepcopy__(self, memo: dict) -> TeacherRef:
        return self

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        return f"<teacher {type(self.model).__name__}{f' from {name}' if name else ''}>"

    __str__ = __repr__


def load_teacher(teacher: Any, task: str) -> nn.Module:
    """The teacher as a model: a model object as it is; a peftkit checkpoint with `peftkit.load`;
    any other path or hub id with `peftkit.load_model` for ``task``."""
    if isinstance(teacher, TeacherRef):
        return teacher.model
    if isinstance(teacher, nn.Module):
        return teacher
    from .safe_write import CONFIG_NAME

    path = os.fspath(teacher)
    if (Path(path) / CONFIG_NAME).is_file():
        from .checkpoint import load

        return load(path)
    from .loading import load_model

    return load_model(path, task=task)[0]


def _labels(model: nn.Module) -> dict[int, str]:
    config = getattr(model, "config", None)
    return {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}


def _vocab_size(model: nn.Module) -> int | None:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    return (
        int(weight.shape[0])
        if weight is not None
        else getattr(getattr(model, "config", None), "vocab_size", None)
    )


def check_compatible(student: nn.Module, teacher: nn.Module, task) -> None:
    """Refuse a teacher whose outputs do not line up with the student's: another label set
    (names compared when both models name their labels; else their number) or vocabulary."""
    if getattr(task, "labels_are_classes", False):
        mine, theirs = _labels(student), _labels(teacher)
        default = {i: f"LABEL_{i}" for i in range(len(mine))}  # transformers' names for unnamed labels
        if len(mine) != len(theirs) or (mine != theirs and default not in (mine, theirs)):
            raise ValueError(
                f"The teacher's labels {list(theirs.values())} differ from the student's {list(mine.values())}: "
                "distillation compares their outputs label by label. Train the teacher on the same label set "
                "(the same data), or load the student with the teacher's labels (load_model(..., labels=...))."
            )
        return
    mine, theirs = _vocab_size(student), _vocab_size(teacher)
    if mine is not None and theirs is not None and mine != theirs:
        raise ValueError(
            f"The teacher's vocabulary ({theirs} tokens) differs from the student's ({mine}): distillation compares "
            "their next-token distributions token by token. Use a teacher with the student's tokenizer (the same "
            "model family), or train without a teacher."
        )


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of each row of softened logits, summed over the rows."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum()


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher/T) || softmax(student/T)) for [N, V] logits, in chunks of
    rows each recomputed in the backward pass (memory: one chunk, not N x V softmaxes)."""
    from torch.utils.checkpoint import checkpoint

    n = student.shape[0]
    if n == 0:
        return student.sum() * 0.0
    rows = max(1, CHUNK_ELEMENTS // max(1, student.shape[-1]))
    total = student.new_zeros((), dtype=torch.float32)
    for i in range(0, n, rows):
        s, t = student[i : i + rows], teacher[i : i + rows]
        total = total + (
            checkpoint(_kl_rows, s, t, temperature, use_reentrant=False)
            if s.requires_grad
            else _kl_rows(s, t, temperature)
        )
    return total / n


def _kept(logits: torch.Tensor, labels: torch.Tensor | None, shifted: bool) -> torch.Tensor:
    """The [N, V] rows of ``logits`` whose label is kept (all rows for one label per example)."""
    if logits.ndim == 2:
        return logits
    if labels is None:
        return logits.flatten(0, -2)
    if logits.shape[1] > labels.shape[1]:  # virtual tokens (prompt tuning) come first: no label of their own
        logits = logits[:, -labels.shape[1] :]
    if shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits[labels != -100]


class Distiller:
    """``loss_of(model, batch)``: the task loss, mixed with the teacher's soft targets when there is one."""

    def __init__(self, teacher: nn.Module | None, alpha: float, temperature: float, task, accelerator=None):
        self.teacher, self.alpha, self.temperature, self.accelerator = (
            teacher,
            float(alpha),
            float(temperature),
            accelerator,
        )
        self.shifted = bool(getattr(task, "next_token_labels", False))
        self._batch: dict | None = None
        self._teacher_logits: torch.Tensor | None = None
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
            if accelerator is not None:
                teacher.to(accelerator.device)

    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for ``batch``, computed once per batch object."""
        if batch is not self._batch:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            autocast = (
                self.accelerator.autocast()
                if self.accelerator is not None
                else torch.autocast("cpu", enabled=False)
            )
            with torch.no_grad(), autocast:
                self._teacher_logits = self.teacher(**inputs).logits.detach()
            self._batch = batch
        return self._teacher_logits

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.teacher is None:
            return model(**batch).loss
        teacher = self.teacher_logits(batch)
        out = model(**batch)
        labels = batch.get("labels")
        student_rows, teacher_rows = (
            _kept(out.logits, labels, self.shifted),
            _kept(teacher, labels, self.shifted),
        )
        soft = (
            distill_kl(student_rows, teacher_rows.to(student_rows.dtype), self.temperature)
            * self.temperature**2
        )
        return (1 - self.alpha) * out.loss + self.alpha * soft
