"""Entity-level precision, recall and F1 for tagged sequences (seqeval): a local `evaluate` module.

Load it with ``evaluate.load("<path to this folder>")`` or ``peftkit.metrics.load_metric("seqeval_f1")``.
"""

import warnings

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report

_DESCRIPTION = """Entity-level scores over BIO/IOB tag sequences, computed with the seqeval package
(the CoNLL evaluation): an entity counts as correct only when its type and its whole span match.
Overall precision, recall and F1 are micro-averaged over entities; accuracy is per tag."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of str): predicted tags per sentence.
    references (list of list of str): true tags per sentence.
    mode (str, optional): None (default, conlleval-compatible) or "strict".
    scheme (str, optional): with mode="strict", the tagging scheme: "IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU".
Returns:
    precision, recall, f1, accuracy (float), and per_type: {type: {precision, recall, f1, number}}.
Example:
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])["f1"]
    1.0
"""


class SeqevalF1(evaluate.Metric):
    """Entity-level precision / recall / F1 (and tag accuracy) through seqeval."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, mode=None, scheme=None):
        predictions, references = [list(p) for p in predictions], [list(r) for r in references]
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predicted sentences but {len(references)} reference sentences")
        for i, (p, r) in enumerate(zip(predictions, references, strict=False)):
            if len(p) != len(r):
                raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} reference tags")
        if scheme is not None:
            import seqeval.scheme

            scheme = getattr(seqeval.scheme, scheme)
        with warnings.catch_warnings():  # no entities at all: seqeval averages empty arrays
            warnings.simplefilter("ignore", RuntimeWarning)
            report = classification_report(
                references, predictions, output_dict=True, mode=mode, scheme=scheme, zero_division=0
            )
        overall = report.pop("micro avg")
        for key in ("macro avg", "weighted avg"):
            report.pop(key, None)
        per_type = {
            name: {"precision": float(s["precision"]), "recall": float(s["recall"]), "f1": float(s["f1-score"]), "number": int(s["support"])}
            for name, s in report.items()
        }
        return {
            "precision": float(overall["precision"]),
            "recall": float(overall["recall"]),
            "f1": float(overall["f1-score"]),
            "accuracy": float(accuracy_score(references, predictions)),
            "per_type": per_type,
        }
