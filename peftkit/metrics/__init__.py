"""peftkit's metrics: local `evaluate` modules that work offline, plus any hub metric id.

``load_metric("accuracy_f1")`` (accuracy + macro-F1), ``load_metric("seqeval_f1")``
(entity-level precision/recall/F1) and ``load_metric("rouge_em")`` (ROUGE-1/2/L + exact match of
generated text) load the modules shipped in this folder with
``evaluate.load(<path>)``: no network needed. Any other name (``"rouge"``, ``"bleu"``,
``"org/metric"``) or a local module path is passed to ``evaluate.load`` as is.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
LOCAL_METRICS = {name: METRICS_DIR / name for name in ("accuracy_f1", "seqeval_f1", "rouge_em")}


def metric_path(name: str) -> Path:
    """The folder of one of peftkit's local metric modules."""
    if name not in LOCAL_METRICS:
        raise KeyError(f"peftkit has no local metric {name!r}; local metrics: {', '.join(LOCAL_METRICS)}.")
    return LOCAL_METRICS[name]


def load_metric(name: str, **kwargs):
    """An ``evaluate`` metric: one of peftkit's (offline) by name, else a hub id or local path.

    ``kwargs`` go to ``evaluate.load`` (e.g. ``keep_in_memory=True``, ``experiment_id=...``)."""
    import evaluate

    path = str(LOCAL_METRICS[name]) if name in LOCAL_METRICS else name
    try:
        return evaluate.load(path, **kwargs)
    except Exception as err:
        if name in LOCAL_METRICS:
            raise
        raise RuntimeError(
            f"Could not load the metric {name!r} with evaluate.load: {type(err).__name__}: {err}. Hub metrics "
            f"need hub access (HF_HUB_OFFLINE unset); peftkit's offline metrics: {', '.join(LOCAL_METRICS)}."
        ) from err


__all__ = ["LOCAL_METRICS", "load_metric", "metric_path"]
