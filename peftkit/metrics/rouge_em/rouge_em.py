"""ROUGE-1, ROUGE-2, ROUGE-L and exact match for generated text: a local `evaluate` module (works
offline; neither the hub's "rouge" script nor the ``rouge_score`` package is needed).

Load it with ``evaluate.load("<path to this folder>")`` or ``peftkit.metrics.load_metric("rouge_em")``.
"""

import re
from collections import Counter

import datasets
import evaluate

_WORD = re.compile(r"\w+")

_DESCRIPTION = """ROUGE F-measures averaged over examples, and exact match. Texts are casefolded and
split into words (runs of Unicode letters, digits and underscores; punctuation dropped, no
stemming, so scores can sit slightly below ``rouge_score``'s stemmed ones on English).
ROUGE-N: F1 of the overlapping word n-grams (counted with multiplicity). ROUGE-L: F1 from the
longest common subsequence of words. Exact match: the share of predictions equal to their
reference after stripping, casefolding and collapsing whitespace. An empty prediction or
reference scores 0 (both empty: 1)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of str): the expected texts.
Returns:
    rouge1, rouge2, rougeL, exact_match (floats in [0, 1]).
Example:
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat down"])["rouge1"]
    0.8571428571428571
"""


def words(text: str) -> list[str]:
    """The casefolded words ROUGE compares."""
    return _WORD.findall(text.casefold())


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: list[str], reference: list[str], n: int) -> float:
    """F1 of the n-grams two word lists share (each n-gram counted as often as both hold it)."""
    pred = Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: list[str], reference: list[str]) -> float:
    """F1 from the longest common subsequence of two word lists."""
    return _f1(lcs_length(prediction, reference), len(prediction), len(reference))


def _normalized(text: str) -> str:
    return " ".join(text.strip().casefold().split())


class RougeEM(evaluate.Metric):
    """Mean ROUGE-1/2/L F1 and exact match over (prediction, reference) text pairs."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        if not references:
            raise ValueError("no predictions to score")
        totals = Counter()
        for prediction, reference in zip(predictions, references, strict=True):
            pred, ref = words(prediction), words(reference)
            totals["rouge1"] += rouge_n(pred, ref, 1)
            totals["rouge2"] += rouge_n(pred, ref, 2)
            totals["rougeL"] += rouge_l(pred, ref)
            totals["exact_match"] += _normalized(prediction) == _normalized(reference)
        return {
            key: float(totals[key]) / len(references) for key in ("rouge1", "rouge2", "rougeL", "exact_match")
        }
