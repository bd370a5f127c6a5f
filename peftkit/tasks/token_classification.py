"""Token classification (NER): words → one tag each; entity-level precision/recall/F1 (seqeval).

Each word's tag goes on its first sub-token; the other sub-tokens and special tokens get -100, so
the loss and the metric see one prediction per word. Words cut off by ``max_length`` are not
scored: keep ``max_length`` above the longest sentence for a faithful test score.
"""

from __future__ import annotations

import numpy as np

from .base import IGNORE_INDEX, Task, align_logits, cached_metric, check_gathered, model_inputs, tokenized


def first_subtoken_labels(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Per-token labels: a word's tag on its first sub-token, -100 elsewhere."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    return labels


class TokenClassificationTask(Task):
    """Columns "tokens" (words) and "tags" (ClassLabel ids) → input ids + per-token labels."""

    name = "token-classification"
    main_metric = "f1"
    greater_is_better = True
    labels_are_classes = True

    def __init__(self, label_names: list[str] | None = None):
        self.label_names = label_names

    def prepare(self, data, tokenizer, max_length: int = 128):
        from ..data import check_classes, label_names

        self.label_names = label_names(data, self.name)
        if "train" in data:
            check_classes(data["train"], self.name)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"Token classification needs a fast tokenizer (word_ids maps sub-tokens to words); "
                f"{type(tokenizer).__name__} is not one. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
            )

        def encode(batch):
            try:
                enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
            except Exception as err:
                if "add_prefix_space" in str(err):
                    raise ValueError(
                        f"{type(tokenizer).__name__} needs add_prefix_space=True for pre-split words: load it with "
                        "AutoTokenizer.from_pretrained(name, add_prefix_space=True)."
                    ) from err
                raise
            labels = [first_subtoken_labels(enc.word_ids(i), tags) for i, tags in enumerate(batch["tags"])]
            return {**enc, "labels": labels}

        return tokenized(data, encode, "peftkit: tokenizing words")

    def eval_step(self, model, batch):
        labels = batch["labels"]
        logits = align_logits(model(**model_inputs(model, batch)).logits, labels)
        labels = labels.to(logits.device)
        predictions = logits.argmax(-1).masked_fill(labels == IGNORE_INDEX, IGNORE_INDEX)
        return {"predictions": predictions, "labels": labels}

    def tag_sequences(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
        """Predicted and true tag names per sentence, over the labelled positions only."""
        if not self.label_names:
            raise ValueError("The task has no label names: call prepare(data, ...) first or pass label_names=.")
        names = self.label_names
        predicted, true = [], []
        for pred_row, label_row in zip(predictions, labels, strict=True):
            keep = label_row != IGNORE_INDEX
            true.append([names[i] for i in label_row[keep]])
            predicted.append([names[i] if 0 <= i < len(names) else "O" for i in pred_row[keep]])
        return predicted, true

    def compute_metrics(self, gathered):
        check_gathered(gathered, "predictions", "labels")
        predicted, true = self.tag_sequences(
            np.asarray(gathered["predictions"]).astype(np.int64), np.asarray(gathered["labels"]).astype(np.int64)
        )
        scores = cached_metric("seqeval_f1").compute(predictions=predicted, references=true)
        return {k: float(scores[k]) for k in ("precision", "recall", "f1", "accuracy")}
