"""Accuracy and F1 for single-label classification: a local `evaluate` module (works offline).

Load it with ``evaluate.load("<path to this folder>")`` or ``peftkit.metrics.load_metric("accuracy_f1")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy (share of predictions equal to the reference) and F1 over classes.
F1 per class is 2*TP / (2*TP + FP + FN) (0 for a class with no true positives). ``average``:
"macro" (default; the unweighted mean over classes), "weighted" (weighted by each class's count
in the references) or "micro" (pooled counts). The classes averaged over are ``labels`` when
given, else every class present in the references or predictions."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    average (str): "macro" (default), "weighted" or "micro".
    labels (list of int, optional): the classes to average F1 over.
Returns:
    accuracy (float), f1 (float).
Example:
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666, 'f1': 0.6666666666666666}
"""


def f1_per_class(predictions, references, labels):
    """Per-class F1 and support (count in the references) for each class in ``labels``."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    scores, support = [], []
    for label in labels:
        tp = int(np.sum((predictions == label) & (references == label)))
        fp = int(np.sum((predictions == label) & (references != label)))
        fn = int(np.sum((predictions != label) & (references == label)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        support.append(tp + fn)
    return np.asarray(scores, dtype=float), np.asarray(support, dtype=float)


class AccuracyF1(evaluate.Metric):
    """Accuracy and (macro by default) F1 over class ids."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions ({predictions.shape}) and references ({references.shape}) differ in length")
        if predictions.size == 0:
            raise ValueError("no predictions to score")
        accuracy = float(np.mean(predictions == references))
        if labels is None:
            labels = np.union1d(predictions, references)
        if average == "micro":
            tp = float(np.sum(np.isin(references, labels) & (predictions == references)))
            fp = float(np.sum(np.isin(predictions, labels) & (predictions != references)))
            fn = float(np.sum(np.isin(references, labels) & (predictions != references)))
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        elif average in ("macro", "weighted"):
            scores, support = f1_per_class(predictions, references, labels)
            if average == "macro":
                f1 = float(scores.mean())
            else:
                f1 = float((scores * support).sum() / support.sum()) if support.sum() else 0.0
        else:
            raise ValueError(f"average must be 'macro', 'weighted' or 'micro', not {average!r}")
        return {"accuracy": accuracy, "f1": float(f1)}
