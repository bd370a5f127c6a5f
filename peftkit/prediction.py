"""Predictions for raw inputs, shared by ``peftkit predict`` and ``peftkit serve``.

`predict_texts` runs one model on a list of inputs and returns one dict per input; the task
(`peftkit.tasks`) does the work. The built-in tasks return:

- classification: ``{"label", "score", "scores": {label: probability}}`` (an input is a text or
  a sentence pair ``{"text", "text_pair"}``)
- multi-label classification: ``{"labels", "scores"}``, the labels scoring above the threshold
- token classification (words split on whitespace, each word's label on its first sub-token):
  ``{"tokens", "labels", "entities": [{"label", "text", "start", "end", "score"}]}``, entity
  spans being character offsets into the text (BIO/IOB tags grouped into entities)
- causal LM: ``{"generated"}``, greedy, laid out as in training (`peftkit.tasks`)
- seq2seq LM: ``{"generated"}``, the decoder's greedy (or beam) output for the source text

``adapter_names`` (one per text) runs a PEFT model holding several LoRA adapters on a mixed
batch (PEFT's per-sample adapter selection); ``labels`` gives each text's label names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_WORD = re.compile(r"\S+")


def entities(text: str, labels: list[str], scores: list[float]) -> list[dict[str, Any]]:
    """Entities from word labels: ``B-X`` opens an entity, ``I-X`` extends one of type X (or
    opens it), ``O`` closes it; a label without a prefix is its own type. Spans are character
    offsets of the whitespace-split words in ``text``; the score is the mean word probability."""
    spans = [m.span() for m in _WORD.finditer(text)]
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for (start, end), label, score in zip(spans, labels, scores, strict=False):
        prefix, kind = (label[:2], label[2:]) if label[:2] in ("B-", "I-", "E-", "S-") else ("", label)
        if label == "O" or not kind:
            current = None
            continue
        if current is not None and prefix in ("I-", "E-") and current["label"] == kind:
            current["end"], current["_scores"] = end, [*current["_scores"], score]
        else:
            current = {"label": kind, "start": start, "end": end, "_scores": [score]}
            out.append(current)
        if prefix in ("E-", "S-"):
            current = None
    for entity in out:
        values = entity.pop("_scores")
        entity["text"] = text[entity["start"] : entity["end"]]
        entity["score"] = sum(values) / len(values)
    return out


def predict_texts(
    model,
    tokenizer,
    task,
    texts: Sequence[Any],
    *,
    labels: Sequence[Sequence[str] | None] | None = None,
    adapter_names: Sequence[str] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    mixed_precision: str | None = None,
) -> list[dict[str, Any]]:
    """One prediction per input (a text, or what the task's ``parse_input`` takes: a sentence
    pair); ``task`` is a registered name or a Task, which does the work (``Task.predict``);
    ``labels[i]`` names input i's classes (default: the model config's id2label).
    ``mixed_precision`` ("bf16", "fp16", "auto"; None / "no": full precision) runs the model under
    the autocast training used (`peftkit.precision`)."""
    from .precision import autocast, resolve_mixed_precision
    from .tasks import get_task

    task = get_task(task)
    inputs = [task.parse_input(t) for t in texts]
    if adapter_names is not None and len(adapter_names) != len(inputs):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(inputs)} texts: give one per text.")
    device = next(model.parameters()).device
    with autocast(resolve_mixed_precision(mixed_precision or "no", on_cpu=device.type == "cpu"), device):
        return task.predict(model, tokenizer, inputs, labels=labels, adapter_names=adapter_names, batch_size=batch_size,
                            max_new_tokens=max_new_tokens)
