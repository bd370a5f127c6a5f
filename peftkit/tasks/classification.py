"""Sequence classification: text → one label; accuracy and macro-F1 (peftkit's accuracy_f1 metric)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from .base import Task, cached_metric, check_gathered, model_inputs, tokenized


class ClassificationTask(Task):
    """Columns "text" and "label" (ClassLabel) → input_ids/attention_mask(/token_type_ids) + labels."""

    name = "classification"
    main_metric = "accuracy"
    greater_is_better = True
    labels_are_classes = True

    def __init__(self, label_names: list[str] | None = None):
        self.label_names = label_names

    def prepare(self, data, tokenizer, max_length: int = 128):
        from ..data import check_classes, label_names

        self.label_names = label_names(data, self.name)
        if "train" in data:
            check_classes(data["train"], self.name)

        def encode(batch):
            enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
            return {**enc, "labels": batch["label"]}

        return tokenized(data, encode, "peftkit: tokenizing")

    def eval_step(self, model, batch):
        logits = model(**model_inputs(model, batch)).logits.float()
        labels = batch["labels"].to(logits.device)
        loss = F.cross_entropy(logits, labels, reduction="none")
        return {"predictions": logits.argmax(-1), "labels": labels, "loss": loss}

    def compute_metrics(self, gathered):
        check_gathered(gathered, "predictions", "labels")
        predictions = np.asarray(gathered["predictions"]).astype(np.int64)
        labels = np.asarray(gathered["labels"]).astype(np.int64)
        scores = cached_metric("accuracy_f1").compute(predictions=predictions, references=labels, average="macro")
        out = {"accuracy": float(scores["accuracy"]), "f1": float(scores["f1"])}
        if "loss" in gathered:
            out["eval_loss"] = float(np.mean(gathered["loss"]))
        return out

