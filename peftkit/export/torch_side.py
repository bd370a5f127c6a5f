"""The PyTorch side of an export: the reference model, sample inputs of varying batch and length,
logits to compare against, labelled eval files, and the merged-model export.

What differs between tasks (the forward pass compared, the pipeline that serves a merged model,
whether ``--eval`` applies) is asked of the checkpoint's task (`peftkit.tasks.Task`, its export section)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import ExportRefused, ExportReport

if TYPE_CHECKING:
    from ..tasks import Task

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SAMPLE_TEXTS = [
    "fine",
    "a thoroughly enjoyable film with a clever plot",
    "the acting was dull and the story went nowhere , which is a shame given the cast",
    "not bad at all",
    "one of the worst movies i have seen this year , long and loud and empty and far too pleased with itself",
    "great",
    "it was ok",
]
GENERATION_CHECK = {"max_new_tokens": 2, "do_sample": False}  # a generating pipeline's check: short, greedy


def checkpoint_task(meta: dict[str, Any]):
    """The `peftkit.tasks.Task` a checkpoint's config names; ExportRefused when none registered has that name."""
    from ..tasks import get_task

    try:
        return get_task(str(meta.get("task")))
    except ValueError as err:
        raise ExportRefused([f"the checkpoint's task: {err} Import the module that registers it first"]) from None


def load_reference(checkpoint: Path, base_model: str | None):
    """(wrapped model in eval mode, tokenizer, peftkit_config) of a peftkit checkpoint."""
    from ..cli import _load_checkpoint

    try:
        return _load_checkpoint(str(checkpoint), base_model)
    except OSError as err:  # no tokenizer in the checkpoint nor at the base model
        raise ExportRefused([f"cannot load the checkpoint's model or tokenizer: {err}. Save the checkpoint with its "
                             "tokenizer (peftkit.save(model, path, tokenizer=...)) or pass --base-model"]) from err


def sample_batches(tokenizer, max_length: int = 128) -> list[dict[str, Any]]:
    """Tokenized batches of several sizes and lengths (numpy int64): 1 short, 1 long, padded batches of 4 and 7.

    Without a pad token (many decoders) only single-sequence batches are made.
    """
    batches = [[SAMPLE_TEXTS[0]], [SAMPLE_TEXTS[4]]]
    if tokenizer.pad_token is not None:
        batches += [SAMPLE_TEXTS[:4], SAMPLE_TEXTS]
    else:
        batches += [[t] for t in SAMPLE_TEXTS[1:4]]
    out = []
    for texts in batches:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        out.append({k: enc[k].astype("int64") for k in MODEL_INPUTS if k in enc})
    return out


def torch_logits(model, batch: dict[str, Any], task: Task):
    """Logits (numpy float32) of a wrapped or plain model on a numpy batch (``task.logits_inputs``'s pass)."""
    import torch

    device = next(model.parameters()).device  # a quantized base may sit on the GPU
    kwargs = task.logits_inputs({k: torch.from_numpy(v).to(device) for k, v in batch.items()})
    with torch.no_grad():
        return model(**kwargs).logits.float().cpu().numpy()


def max_difference(reference, other, attention_mask) -> float:
    """Largest absolute logit difference; per-token logits are compared on real (unpadded) tokens only."""
    import numpy as np

    diff = np.abs(reference - other)
    if diff.ndim == 3:
        diff = diff[attention_mask.astype(bool)]
    return float(diff.max()) if diff.size else 0.0


def read_eval_file(path: str | Path, text_column: str, label_column: str, names: list[str], task: str):
    """(texts, label ids in the checkpoint's label order) of a labelled csv/tsv/json/jsonl file (``task``'s data).

    Labels are matched to the checkpoint's label names; integer labels whose names the checkpoint
    does not know (SST-2's 0/1 against a checkpoint labelled otherwise) are taken as indices.
    """
    from ..data import checkpoint_label_ids, load_data

    path = str(path)
    if not Path(path).is_file():
        raise ExportRefused([f"--eval {path}: no such file"])
    data = load_data(None, task, train=path, validation=path, text_column=text_column, label_column=label_column)
    rows = data["validation"]
    ids, unknown = checkpoint_label_ids(rows.features["label"].names, names)
    if unknown:
        raise ExportRefused([f"--eval {path}: label {unknown[0]!r} is none of the checkpoint's labels {names}; "
                             "give a file labelled with those names (or their indices)"])
    return list(rows["text"]), [ids[j] for j in rows["label"]]


def accuracy(predict: Callable[[dict[str, Any]], Any], tokenizer, texts: list[str], labels: list[int],
             max_length: int = 128, batch_size: int = 32) -> float:
    """Accuracy of ``predict`` (numpy batch -> logits) on labelled texts."""
    correct = 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="np")
        logits = predict({k: enc[k].astype("int64") for k in MODEL_INPUTS if k in enc})
        correct += int((logits.argmax(-1) == labels[i : i + batch_size]).sum())
    return correct / max(1, len(texts))


def label_list(model) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return [id2label[i] for i in sorted(id2label)]


@dataclass
class Reference:
    """What the wrapped PyTorch model gives before anything is merged or traced: logits on sample
    batches and, with an eval file, its labelled rows and accuracy."""

    task: Task
    tokenizer: Any
    max_length: int
    batches: list[dict[str, Any]]
    logits: list[Any]
    eval_file: str | None = None
    texts: list[str] | None = None
    labels: list[int] | None = None
    accuracy: float | None = None


def reference_outputs(model, tokenizer, task: Task, eval_file=None, text_column: str = "text", label_column: str = "label",
                      max_length: int = 128) -> Reference:
    batches = sample_batches(tokenizer, max_length)
    ref = Reference(task, tokenizer, max_length, batches, [torch_logits(model, b, task) for b in batches])
    if eval_file is not None:
        if not task.export_accuracy:
            raise ExportRefused([f"--eval measures the accuracy of single-label classifiers; this checkpoint is "
                                 f"{task.name}: score it on a labelled file with `peftkit eval CHECKPOINT --test FILE` "
                                 f"({task.main_metric})"])
        ref.eval_file = str(eval_file)
        ref.texts, ref.labels = read_eval_file(eval_file, text_column, label_column, label_list(model), task.name)
        ref.accuracy = accuracy(lambda b: torch_logits(model, b, task), tokenizer, ref.texts, ref.labels, max_length)
    return ref


def compare(report: ExportReport, ref: Reference, predict: Callable[[dict[str, Any]], Any], what: str, atol: float | None) -> float:
    """Largest logit difference of ``predict`` against the reference on every sample batch; a check when ``atol``."""
    worst = max(max_difference(r, predict(b), b["attention_mask"]) for r, b in zip(ref.logits, ref.batches, strict=True))
    report.metrics["max_abs_logit_diff"] = worst
    shapes = ", ".join("x".join(map(str, b["input_ids"].shape)) for b in ref.batches)
    if atol is not None:
        report.check(f"{what} logits match the PyTorch model", worst <= atol, f"max |diff| {worst:.2e} (<= {atol:g}) on batches {shapes}")
    else:
        report.notes.append(f"{what} logits differ from the PyTorch model's by up to {worst:.3g} (batches {shapes})")
    return worst


def record_eval(report: ExportReport, ref: Reference, predict: Callable[[dict[str, Any]], Any]) -> None:
    """With an eval file: the export's accuracy next to the PyTorch model's, and the difference in points."""
    if ref.texts is None:
        return
    got = accuracy(predict, ref.tokenizer, ref.texts, ref.labels, ref.max_length)
    delta = 100 * (got - ref.accuracy)
    report.metrics["eval"] = {"file": ref.eval_file, "rows": len(ref.texts), "accuracy_pytorch": round(ref.accuracy, 4),
                              "accuracy_export": round(got, 4), "delta_points": round(delta, 2)}
    report.checks.append({"check": "eval accuracy", "ok": True,
                          "detail": f"{got:.4f} exported vs {ref.accuracy:.4f} PyTorch ({delta:+.2f} points) on {len(ref.texts)} rows"})


def merge_for_export(model, strategy: str):
    """The merged plain model, or None when the strategy cannot merge (adapter, prefix, prompt)."""
    from .. import merge
    from ..strategies import REGISTRY

    spec = REGISTRY.get(strategy)
    if spec is not None and not spec.mergeable:
        return None
    return merge(model)


def write_merged(tmp: Path, model, tokenizer, meta: dict[str, Any], report: ExportReport, ref: Reference, atol: float) -> None:
    """Fold the update into the base weights, save a plain transformers model, then reload it and check it:
    its logits against the wrapped model's and, for classifiers, a transformers pipeline showing the real labels."""
    from ..introspect import auto_class

    task = ref.task
    merged = merge_for_export(model, meta["strategy"])
    if merged is None:
        from ..strategies import REGISTRY

        raise ExportRefused([f"cannot merge a {meta['strategy']!r} model: {REGISTRY[meta['strategy']].merge_refusal} "
                             "Export it with --format onnx instead (the wrapped model is traced as it is)"])
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    reloaded = auto_class(task.name).from_pretrained(tmp).eval()
    compare(report, ref, lambda b: torch_logits(reloaded, b, task), "merged model (reloaded from disk)", atol)
    if task.pipeline_tag:
        _check_pipeline(tmp, task, label_list(reloaded), report)
    record_eval(report, ref, lambda b: torch_logits(reloaded, b, task))
    if task.pipeline_tag:
        call = "".join(f", {k}={v!r}" for k, v in task.pipeline_options.items())
        report.serve.append(f"transformers.pipeline({task.pipeline_tag!r}, model={report.output!r})"
                            + (f"(texts{call})" if call else ""))
    else:
        report.serve.append(f"transformers.{type(reloaded).__name__}.from_pretrained({report.output!r})")


def _check_pipeline(folder: Path, task: Task, names: list[str], report: ExportReport) -> None:
    from transformers import pipeline

    tag = task.pipeline_tag
    pipe = pipeline(tag, model=str(folder), tokenizer=str(folder), device="cpu")
    options = {**task.pipeline_options, **(GENERATION_CHECK if task.generative else {})}
    shown = task.pipeline_shows(pipe(SAMPLE_TEXTS[1], **options))
    if task.generative:
        report.check("transformers pipeline loads it and generates", isinstance(shown, str), f"{tag!r} -> {shown!r}")
        return
    ok = all(label in names for label in shown)
    report.check("transformers pipeline loads it and shows the real labels", ok, f"{tag!r} -> {shown}; labels {names}")
    if all(n.startswith("LABEL_") for n in names):
        report.notes.append("the checkpoint carries no label names (LABEL_0, ...): train with labelled data to name them")
