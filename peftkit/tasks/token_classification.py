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
    summary = "words -> one tag each (NER)"
    main_metric = "f1"
    greater_is_better = True
    labels_are_classes = True
    auto_class = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    class_suffixes = ("ForTokenClassification",)
    has_head = True
    columns = {"tokens": "tokens", "tags": "tags"}
    label_column = "tags"
    nested_labels = True
    reads_conll = True
    pre_split_words = True
    bench_metrics = ("f1", "precision", "recall", "accuracy")
    pipeline_tag = "token-classification"
    onnx_output = "logits (batch, tokens, labels): each word's label is the argmax at its first sub-token"

    def __init__(self, label_names: list[str] | None = None):
        self.label_names = label_names

    def canonicalize(self, raw, origin, columns, options):
        from datasets import ClassLabel, Features, Sequence, Value

        from ..data import (
            DataError,
            canonical_columns,
            check_lengths,
            check_tokens,
            drop_blank_tokens,
            encode_labels,
            inner_feature,
        )

        tokens_column, tags_column = columns["tokens"], columns["tags"]
        for split, ds in raw.items():
            check_tokens(ds, tokens_column, "tokens_column", origin[split])
            if inner_feature(ds.features[tags_column]) is None:
                raise DataError(
                    f"The tags column {tags_column!r} in {origin[split]} must hold a list of tags per row; it holds "
                    f"{ds.features[tags_column]}. Pass tags_column= naming the per-word tag column."
                )
        encoded, names = encode_labels(raw, origin, tags_column, nested=True)
        features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=names))})
        out = {s: canonical_columns(ds, columns, features, ids, "tags", True) for s, (ds, ids) in encoded.items()}
        for split, ds in out.items():
            check_lengths(ds, origin[split])
        return {s: drop_blank_tokens(ds, tokens_column, origin[s]) for s, ds in out.items()}

    def prepare(self, data, tokenizer, max_length: int = 128):
        from ..data import check_classes, label_names

        self.label_names = label_names(data, self)
        if "train" in data:
            check_classes(data["train"], self)
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

    # ------------------------------------------------------------------ prediction

    def input_columns(self) -> tuple[str, ...]:
        return ("text",)

    def check_input(self, value):
        return None if value.split() else "has no words to label"

    def predict(self, model, tokenizer, inputs, *, labels=None, adapter_names=None, batch_size=32, max_new_tokens=32):
        """``{"tokens", "labels", "entities"}`` per text: words split on whitespace, each word's label
        on its first sub-token, entities grouped from BIO/IOB tags (`peftkit.prediction.entities`)."""
        from .classification import batched_predictions

        return batched_predictions(self, model, tokenizer, inputs, labels, adapter_names, batch_size)

    def predict_batch(self, model, tokenizer, inputs, names, adapter_names):
        from ..prediction import entities
        from .classification import forward, label_namer

        words = [t.split() for t in inputs]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, padding=True, return_tensors="pt")
        probs = forward(model, enc, adapter_names).softmax(-1)
        out = []
        for j, (text, row_names) in enumerate(zip(inputs, names, strict=True)):
            name = label_namer(row_names)
            word_labels, word_scores, seen = [], [], set()
            for pos, w in enumerate(enc.word_ids(j)):
                if w is not None and w not in seen:
                    seen.add(w)
                    k = int(probs[j, pos].argmax())
                    word_labels.append(name(k))
                    word_scores.append(float(probs[j, pos, k]))
            missing = len(words[j]) - len(word_labels)  # words cut off by truncation
            word_labels, word_scores = word_labels + ["O"] * missing, word_scores + [0.0] * missing
            out.append({"tokens": words[j], "labels": word_labels, "entities": entities(text, word_labels, word_scores)})
        return out

    def present(self, value, prediction):
        return {"text": value, "tokens": prediction["tokens"], "labels": prediction["labels"]}

    def pipeline_shows(self, output):
        """The tags of a token-classification pipeline's entities (``{"entity", "word", ...}``; no "O")."""
        return [row["entity"] for row in output]
