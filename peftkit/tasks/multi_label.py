"""Multi-label classification: a text (or a pair) → any number of labels; micro/macro F1.

The label column holds a list of labels per row (JSON lists, parquet lists) or delimited strings
split on ``label_separator`` (``"billing|refund"`` with ``--label-separator "|"``); an empty list
or string means no label applies. The model gets a sigmoid head (``problem_type=
"multi_label_classification"``: transformers trains it with a binary cross-entropy per label),
and a label is predicted when its probability reaches ``threshold`` (0.5 by default).

Metrics, computed here from the 0/1 matrices: ``micro_f1`` (pooled over every (row, label)
decision), ``macro_f1`` (the mean of per-label F1 over the labels present in the references or the
predictions), ``subset_accuracy`` (rows whose whole label set is right), ``eval_loss``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import PadCollator, check_gathered, model_inputs, pad_token_id
from .classification import ClassificationTask, forward, label_namer


def multilabel_scores(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """micro_f1, macro_f1 and subset_accuracy of 0/1 matrices (rows x labels)."""
    predictions, references = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    if predictions.size == 0:
        raise ValueError("No evaluation examples to compute metrics on.")
    tp = (predictions & references).sum(0).astype(float)
    fp = (predictions & ~references).sum(0).astype(float)
    fn = (~predictions & references).sum(0).astype(float)
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()) if tp.sum() else 0.0
    seen = (tp + fp + fn) > 0
    per_label = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=seen)
    macro = float(per_label[seen].mean()) if seen.any() else 0.0
    return {"micro_f1": float(micro), "macro_f1": macro, "subset_accuracy": float((predictions == references).all(1).mean())}


class MultiHotCollator(PadCollator):
    """PadCollator, with each row's label ids turned into a float multi-hot vector (BCE targets)."""

    def __init__(self, pad_id: int, num_labels: int):
        super().__init__(pad_id)
        self.num_labels = num_labels

    def __call__(self, rows):
        labels = [row["labels"] for row in rows] if rows and "labels" in rows[0] else None
        batch = super().__call__([{k: v for k, v in row.items() if k != "labels"} for row in rows])
        if labels is not None:
            hot = torch.zeros(len(labels), self.num_labels)
            for i, ids in enumerate(labels):
                hot[i, list(ids)] = 1.0
            batch["labels"] = hot
        return batch


class MultiLabelClassificationTask(ClassificationTask):
    """Columns "text" (+ "text_pair") and "label" (a list of ClassLabel ids per row)."""

    name = "multi-label-classification"
    summary = "text (or a text pair) -> any number of labels (sigmoid head)"
    main_metric = "micro_f1"
    greater_is_better = True
    labels_are_classes = False  # "labels" are label sets: chance_loss is computed here
    model_config = {"problem_type": "multi_label_classification"}
    nested_labels = True
    stratify = False
    options = {"label_separator": None}
    option_help = {"label_separator": "split a label column of strings on this (e.g. '|'); lists need none"}
    bench_metrics = ("micro_f1", "macro_f1", "subset_accuracy")
    pipeline_options = {"top_k": None, "function_to_apply": "sigmoid"}  # every label, own probability
    onnx_output = "logits (batch, labels): a sigmoid gives each label's probability; it applies at >= 0.5"
    export_accuracy = False  # argmax accuracy means nothing for label sets: `peftkit eval` scores micro/macro F1

    def __init__(self, label_names: list[str] | None = None, threshold: float = 0.5):
        super().__init__(label_names)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}.")
        self.threshold = threshold

    @classmethod
    def claims(cls, model_class_name: str, config=None) -> bool:
        return model_class_name.endswith(cls.class_suffixes) and getattr(config, "problem_type", None) == "multi_label_classification"

    # ------------------------------------------------------------------ data

    def drop_unusable(self, raw, origin, columns):
        """Nothing to drop (hub "-1 = unlabelled" splits are single-label)."""

    def label_source(self, raw, origin, column, options):
        return {s: self.label_lists(ds, column, options["label_separator"], origin[s]) for s, ds in raw.items()}

    @staticmethod
    def label_lists(ds, column: str, separator: str | None, where: str):
        """``ds`` with ``column`` as a list of label strings per row (strings split on ``separator``)."""
        from datasets import Sequence, Value

        from ..data import DataError, inner_feature

        feature = ds.features[column]
        if inner_feature(feature) is not None:
            return ds
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise DataError(f"The label column {column!r} in {where} holds {feature}: multi-label classification needs a "
                            "list of labels per row, or strings of labels joined by label_separator=.")
        if separator is None:
            raise DataError(f"The label column {column!r} in {where} holds strings: pass label_separator= (--label-separator, "
                            "e.g. '|') to split each into its labels, or give lists of labels (json/jsonl/parquet).")
        features = ds.features.copy()
        features[column] = Sequence(Value("string"))

        def split(batch):
            return {column: [[p.strip() for p in (v or "").split(separator) if p.strip()] for v in batch[column]]}

        return ds.map(split, batched=True, features=features, desc="peftkit: splitting labels")

    def chance_loss(self, prepared) -> float | None:
        """The mean binary cross-entropy of predicting each label's frequency (BCE is averaged over labels)."""
        if not self.label_names or "labels" not in prepared.column_names or not len(prepared):
            return None
        counts = np.zeros(len(self.label_names))
        for ids in prepared["labels"]:
            counts[list(ids)] += 1
        p = counts / len(prepared)
        entropy = [-(q * math.log(q) + (1 - q) * math.log(1 - q)) if 0 < q < 1 else 0.0 for q in p]
        return float(np.mean(entropy)) if any(entropy) else None

    # ------------------------------------------------------------------ training

    def collator(self, tokenizer):
        if not self.label_names:
            raise ValueError("The task has no label names: call prepare(data, ...) first or pass label_names=.")
        return MultiHotCollator(pad_token_id(tokenizer), len(self.label_names))

    def eval_step(self, model, batch):
        logits = model(**model_inputs(model, batch)).logits.float()
        labels = batch["labels"].to(logits.device).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
        predictions = (logits.sigmoid() >= self.threshold).long()
        return {"predictions": predictions, "labels": labels.long(), "loss": loss}

    def compute_metrics(self, gathered):
        check_gathered(gathered, "predictions", "labels")
        out = multilabel_scores(np.asarray(gathered["predictions"]) == 1, np.asarray(gathered["labels"]) == 1)
        if "loss" in gathered:
            out["eval_loss"] = float(np.mean(gathered["loss"]))
        return out

    # ------------------------------------------------------------------ prediction

    def predict_batch(self, model, tokenizer, inputs, names, adapter_names) -> list[dict[str, Any]]:
        """``{"labels": [names at or above the threshold], "scores": {label: probability}}`` per input."""
        probs = forward(model, self.encode_inputs(tokenizer, inputs), adapter_names).sigmoid()
        out = []
        for row, row_names in zip(probs.tolist(), names, strict=True):
            name = label_namer(row_names)
            out.append({"labels": [name(k) for k, p in enumerate(row) if p >= self.threshold],
                        "scores": {name(k): float(p) for k, p in enumerate(row)}})
        return out

    def present(self, value, prediction):
        shown = value if isinstance(value, dict) else {"text": value}
        return {**shown, "labels": prediction["labels"]}
