"""Export a peftkit checkpoint for serving, and check every export after writing it.

Formats:
- ``merged``: a plain transformers model (update folded in), tokenizer and real label names;
  reloaded and compared with the wrapped model, and loaded with the task's transformers ``pipeline``
  where it has one (encoder-decoders have none in transformers 5).
- ``onnx``: ``model.onnx`` (dynamic batch and sequence axes) + tokenizer + config; onnxruntime's
  logits must match PyTorch's within ``atol`` (1e-3) on batches of several sizes and lengths.
- ``onnx-int8``: the same graph with int8 weights (onnxruntime dynamic quantization) for CPUs; its
  logit difference is reported, and with ``eval_file`` its accuracy next to the PyTorch model's.
- ``vllm``: the LoRA adapter, checked against vLLM's adapter rules (see `peftkit.export.vllm`),
  with the ``vllm serve`` command that loads it; or a refusal listing every rule it breaks.

Every export is written into a temporary sibling directory and renamed into place only when its
checks pass; an existing output is replaced only if an earlier export wrote it. This module
imports no torch/onnx until `export` runs, so ``peftkit --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from .report import MARKER, ExportRefused, ExportReport

FORMATS = ("merged", "onnx", "onnx-int8", "vllm")

__all__ = ["FORMATS", "MARKER", "ExportRefused", "ExportReport", "export", "setup_export_parser"]


def export(checkpoint: str | os.PathLike, output: str | os.PathLike, format: str = "merged", eval_file: str | os.PathLike | None = None,
           base_model: str | None = None, *, text_column: str = "text", label_column: str = "label", max_length: int = 128,
           atol: float = 1e-3) -> ExportReport:
    """Export the peftkit checkpoint at ``checkpoint`` to the directory ``output`` as ``format``; return the report.

    ``eval_file``: a labelled csv/tsv/json/jsonl (``text_column``, ``label_column``) on which the export's
    accuracy is measured next to the PyTorch model's (single-label classification: tasks whose
    ``export_accuracy`` is set). ``base_model``: the base model
    path or id when not the one the checkpoint names. Raises `ExportRefused` (a ValueError) listing
    every reason when the export cannot be written or fails a check; nothing is left behind then.
    """
    from ..checkpoint import atomic_directory, read_config
    from .report import guard_output, write_marker

    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}. Formats: {', '.join(FORMATS)}.")
    checkpoint, output = Path(checkpoint), Path(output)
    meta = read_config(checkpoint)
    guard_output(output, checkpoint)
    report = ExportReport(format, str(checkpoint), str(output), meta.get("strategy"), meta.get("task"))
    if format == "vllm":
        from .vllm import check_adapter, write_vllm

        if eval_file is not None:
            raise ExportRefused(["--eval measures classifiers; a vLLM adapter export has no accuracy check"])
        config = check_adapter(checkpoint, meta, base_model, report)
        if report.problems:
            raise ExportRefused(report.problems, report, f"{checkpoint} cannot be served as a vLLM/TGI LoRA adapter")
        writer = lambda tmp: write_vllm(tmp, checkpoint, meta, base_model, report, config)  # noqa: E731
    else:
        from .onnx import require_onnx
        from .torch_side import checkpoint_task, load_reference, reference_outputs

        task = checkpoint_task(meta)
        if format.startswith("onnx"):
            require_onnx(task)  # before the model loads
        model, tokenizer, meta = load_reference(checkpoint, base_model)
        ref = reference_outputs(model, tokenizer, task, eval_file, text_column, label_column, max_length)
        if format == "merged":
            from .torch_side import write_merged

            writer = lambda tmp: write_merged(tmp, model, tokenizer, meta, report, ref, atol)  # noqa: E731
        else:
            from .onnx import write_onnx

            writer = lambda tmp: write_onnx(tmp, model, tokenizer, meta, report, ref, atol, int8=format == "onnx-int8")  # noqa: E731
    with atomic_directory(output) as tmp:
        writer(tmp)
        if report.problems:
            raise ExportRefused(report.problems, report, f"the {format} export of {checkpoint} failed its checks")
        report.written = True
        write_marker(tmp, report)
    return report


# --------------------------------------------------------------------------- CLI


def setup_export_parser(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``peftkit export CHECKPOINT OUTPUT [--format ...]``."""
    p.add_argument("checkpoint", help="a checkpoint directory written by peftkit (e.g. runs/sst2/best)")
    p.add_argument("output", help="the export directory (created; replaced only if an earlier export wrote it)")
    p.add_argument("--format", default="merged", choices=FORMATS,
                   help="merged (transformers model, default) | onnx | onnx-int8 (CPU) | vllm (LoRA adapter for vLLM/TGI)")
    p.add_argument("--base-model", help="base model path or id (default: the one the checkpoint names)")
    p.add_argument("--eval", dest="eval_file", metavar="FILE", help="labelled csv/tsv/json/jsonl: report the export's accuracy "
                   "next to the PyTorch model's (single-label classification)")
    p.add_argument("--text-column", default="text", help="text column of --eval (default: text)")
    p.add_argument("--label-column", default="label", help="label column of --eval (default: label)")
    p.add_argument("--max-length", type=int, default=128, help="tokenizer truncation for the checks (default: 128)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest logit difference allowed for merged/onnx (default: 1e-3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return cmd_export


def cmd_export(args: argparse.Namespace) -> int:
    from ..cli import expand_path

    report = export(args.checkpoint, args.output, format=args.format, eval_file=expand_path(args.eval_file),
                    base_model=args.base_model, text_column=args.text_column, label_column=args.label_column,
                    max_length=args.max_length, atol=args.atol)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.text())
    return 0
