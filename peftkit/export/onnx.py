"""ONNX export (``torch.onnx.export``, the dynamo exporter, dynamic batch and sequence axes), checked
with onnxruntime against the PyTorch model, and int8 dynamic quantization for CPUs.

Mergeable strategies are merged first (a plain graph runs faster); adapters, prefix and prompt tuning
are traced as wrapped, and refused with the tracer's reason when they do not trace. The task decides
the rest (`peftkit.tasks.Task`): the forward pass traced (``logits_inputs``), what the output holds
(``onnx_output``), or why its models are refused before they load (``onnx_refusal``: encoder-decoders).
Generative models are exported without a KV cache (full-sequence logits); for cached generation use
vLLM or optimum.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import ExportRefused, ExportReport
from .torch_side import MODEL_INPUTS, Reference, compare, merge_for_export, record_eval

if TYPE_CHECKING:
    from ..tasks import Task

MODEL_FILE = "model.onnx"


def onnx_tasks() -> tuple[str, ...]:
    """The registered tasks a logits-only ONNX graph serves (those without an ``onnx_refusal``)."""
    from ..tasks import TASKS

    return tuple(name for name, cls in TASKS.items() if cls.onnx_refusal is None)


def require_onnx(task: Task) -> None:
    """Refuse, before any model loads, a task the ONNX export does not cover, or missing onnx packages."""
    import importlib.util

    if task.onnx_refusal is not None:
        covered = ", ".join(onnx_tasks())
        raise ExportRefused([f"ONNX export covers {covered} models; {task.name} {task.onnx_refusal}"])
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportRefused([f"ONNX export needs {', '.join(missing)}: pip install 'peftkit[export]'"])


def session(path: str | Path):
    """An onnxruntime CPU session; its thread count follows OMP_NUM_THREADS when set."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predictor(sess):
    """numpy batch -> logits, feeding only the inputs the graph takes."""
    names = [i.name for i in sess.get_inputs()]
    return lambda batch: sess.run(None, {k: batch[k] for k in names})[0]


def _logits_module(model, task: Task, names: tuple[str, ...]):
    import torch

    class LogitsOnly(torch.nn.Module):
        """Tensors in, logits out: the shape torch.export and onnxruntime want."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**task.logits_inputs(dict(zip(names, tensors, strict=True)))).logits

    return LogitsOnly().eval()


def trace_to_onnx(model, task: Task, strategy: str, example: dict[str, Any], path: Path) -> None:
    """Write ``model`` (its logits) to ``path`` with dynamic batch and sequence axes; ExportRefused if it does not trace."""
    import torch

    names = tuple(k for k in MODEL_INPUTS if k in example)
    args = tuple(torch.from_numpy(example[k]) for k in names)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")},)
    try:
        program = torch.onnx.export(_logits_module(model, task, names), args, dynamo=True, input_names=list(names),
                                    output_names=["logits"], dynamic_shapes=(dims * len(names),), verbose=False)
        program.save(str(path))
    except Exception as err:  # the exporter raises many types; name the first line of the reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportRefused([f"the {strategy} model does not trace to ONNX with torch.onnx.export (dynamo): "
                             f"{type(err).__name__}: {reason[:300]}. Export it with --format merged where the strategy "
                             "merges, or serve it with PyTorch"]) from err


def write_onnx(tmp: Path, model, tokenizer, meta: dict[str, Any], report: ExportReport, ref: Reference, atol: float,
               int8: bool = False) -> None:
    """model.onnx (fp32, or int8 weights with ``int8``) + tokenizer + config.json, checked with onnxruntime."""
    import numpy as np

    task, strategy = ref.task, meta["strategy"]
    merged = merge_for_export(model, strategy)
    if merged is None:
        report.notes.append(f"{strategy} cannot merge: the wrapped model is traced as it is")
    if task.generative:
        vllm = " or the adapter with vLLM (--format vllm)" if task.vllm_lora else ""
        report.notes.append(f"{task.name} exported without a KV cache: full-sequence logits; for cached generation "
                            f"serve the merged model{vllm}")
    graph_model = merged if merged is not None else model
    example = {k: np.concatenate([v, v]) for k, v in ref.batches[1].items()}  # batch 2: neither axis may specialize to 1
    fp32 = tmp / (".fp32.onnx" if int8 else MODEL_FILE)
    trace_to_onnx(graph_model, task, strategy, example, fp32)
    fp32_predict = predictor(session(fp32))
    compare(report, ref, fp32_predict, "ONNX fp32", atol)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # ORT's advice to pre-process first is silenced: its symbolic shape inference fails on dynamo graphs.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32), str(tmp / MODEL_FILE), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        fp32.unlink()
        predict = predictor(session(tmp / MODEL_FILE))
        report.metrics["fp32_max_abs_logit_diff"] = report.metrics["max_abs_logit_diff"]
        compare(report, ref, predict, "ONNX int8", None)
        agree = sum(int((r.argmax(-1) == predict(b).argmax(-1)).all()) for r, b in zip(ref.logits, ref.batches, strict=True))
        report.check("ONNX int8 runs on every sample batch", True, f"argmax agrees with PyTorch on {agree}/{len(ref.batches)} batches")
        if ref.texts is None:
            report.notes.append("int8 accuracy not measured: pass --eval FILE (a labelled csv/tsv/jsonl) to report its accuracy delta")
    else:
        predict = fp32_predict
    record_eval(report, ref, predict)
    graph_model.config.save_pretrained(tmp)  # id2label for whoever serves the graph
    tokenizer.save_pretrained(tmp)
    sess = session(tmp / MODEL_FILE)
    axes = {i.name: i.shape for i in sess.get_inputs()}
    report.check("dynamic batch and sequence axes", all(isinstance(d, str) for s in axes.values() for d in s), str(axes))
    report.serve.append(f"onnxruntime.InferenceSession({str(Path(report.output) / MODEL_FILE)!r}) with inputs "
                        f"{list(axes)} from the tokenizer saved beside it; output {task.onnx_output}")
