"""Knowledge distillation (peftkit.distill); adversarial training and distillation through train(), the
CLI and YAML."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from helpers_training import load_sentiment, minilm_path, save_tiny_model, write_sentiment_csv
from test_adversarial import tiny_batch, tiny_model

import peftkit
from peftkit.distill import Distiller, check_compatible, distill_kl
from peftkit.tasks import get_task


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(
        F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="batchmean"
    )


def test_chunked_kl_matches_the_plain_one_with_its_gradient(monkeypatch):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(37, 50, generator=g, requires_grad=True)
    teacher = torch.randn(37, 50, generator=g)
    expected = reference_kl(student, teacher, 2.0)
    (want,) = torch.autograd.grad(expected, student)
    monkeypatch.setattr("peftkit.distill.CHUNK_ELEMENTS", 50 * 8)  # 5 chunks of 8 rows
    got = distill_kl(student, teacher, 2.0)
    (grad,) = torch.autograd.grad(got, student)
    assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(grad, want, atol=1e-7)


@pytest.mark.parametrize("task", ["classification", "token-classification", "causal-lm"])
def test_distillation_loss_per_task(task):
    student, teacher = tiny_model(task, seed=0), tiny_model(task, seed=1)
    batch, task_obj = tiny_batch(task), get_task(task)
    student.train()
    plain = Distiller(None, 0.5, 2.0, task_obj)(student, batch)
    assert torch.allclose(plain, student(**batch).loss)
    loss = Distiller(teacher, 0.5, 2.0, task_obj)(student, batch)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    labels = batch["labels"]
    if task == "classification":
        kl = reference_kl(s, t, 2.0)
    else:
        if task == "causal-lm":  # logits at i predict label i+1
            s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
        keep = labels != -100
        kl = reference_kl(s[keep], t[keep], 2.0)  # the ignored positions do not count
    assert torch.allclose(loss, 0.5 * student(**batch).loss + 0.5 * 4.0 * kl, atol=1e-5)
    assert loss.requires_grad
    # alpha 0: the task loss alone; a teacher identical to the student: no soft term
    assert torch.allclose(Distiller(teacher, 0.0, 2.0, task_obj)(student, batch), plain)
    twin = Distiller(tiny_model(task, seed=0), 1.0, 2.0, task_obj)(student, batch)
    assert abs(twin.item()) < 1e-5


def test_teacher_logits_are_computed_once_per_batch():
    teacher, calls = tiny_model("classification", seed=1), []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    distiller = Distiller(teacher, 0.5, 2.0, get_task("classification"))
    student, batch = tiny_model("classification"), tiny_batch("classification")
    for _ in range(3):  # the clean pass and two adversarial ones
        distiller(student, batch)
    assert len(calls) == 1
    distiller(student, tiny_batch("classification", seed=1))
    assert len(calls) == 2


def test_mismatched_labels_or_vocabulary_refused():
    from peftkit.introspect import auto_class

    def labelled(names):
        return auto_class("classification").from_config(
            tiny_config(
                "bert",
                num_labels=len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
            )
        )

    task = get_task("classification")
    check_compatible(labelled(["neg", "pos"]), labelled(["neg", "pos"]), task)
    check_compatible(
        labelled(["neg", "pos"]),
        auto_class("classification").from_config(tiny_config("bert", num_labels=2)),
        task,
    )
    with pytest.raises(
        ValueError, match=r"teacher's labels \['pos', 'neg'\] differ from the student's \['neg', 'pos'\]"
    ):
        check_compatible(labelled(["neg", "pos"]), labelled(["pos", "neg"]), task)
    with pytest.raises(ValueError, match="teacher's labels"):
        check_compatible(labelled(["neg", "pos"]), labelled(["neg", "pos", "mixed"]), task)
    small = auto_class("causal-lm").from_config(tiny_config("gpt2", vocab_size=80))
    with pytest.raises(
        ValueError, match=r"teacher's vocabulary \(80 tokens\) differs from the student's \(96\)"
    ):
        check_compatible(tiny_model("causal-lm"), small, get_task("causal-lm"))


def test_train_config_validates_distillation_options_and_keeps_the_teacher_uncopied():
    from dataclasses import asdict, replace

    from peftkit.training import TrainConfig

    with pytest.raises(ValueError, match="distill_alpha"):
        TrainConfig(distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        TrainConfig(distill_temperature=0)
    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(teacher=3)
    teacher = tiny_model("classification")
    config = TrainConfig(teacher=teacher)
    assert config.teacher.model is teacher and asdict(config)["teacher"].model is teacher
    assert replace(config, seed=1).teacher.model is teacher
    assert "BertForSequenceClassification" in json.dumps(asdict(config), default=str)


# --------------------------------------------------------------------------- through train(), CLI and YAML

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    if minilm_path() is None:
        pytest.skip("needs the packaged MiniLM tokenizer")
    root = tmp_path_factory.mktemp("distill")
    return {
        "model": save_tiny_model(root / "tiny-bert"),
        "data": write_sentiment_csv(root / "data"),
        "root": root,
    }


def _train(assets, out, strategy="lora", **config):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = (
        peftkit.wrap(AutoModelForSequenceClassification.from_pretrained(assets["model"]), strategy)
        if strategy != "full"
        else AutoModelForSequenceClassification.from_pretrained(assets["model"])
    )
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    config = peftkit.TrainConfig(
        output_dir=str(out), max_steps=3, batch_size=8, progress=False, lr=5e-3, **config
    )
    return peftkit.train(model, tokenizer, load_sentiment(assets["data"]), config), model


@needs_minilm
def test_train_with_adversarial_and_a_teacher_checkpoint_from_python(assets, tmp_path):
    plain, _ = _train(assets, tmp_path / "plain")
    adv, model = _train(assets, tmp_path / "fgm", adversarial="fgm", gradient_accumulation_steps=2)
    assert [r["loss"] for r in adv.log if "loss" in r] != [r["loss"] for r in plain.log if "loss" in r]
    assert not model.base_model.get_input_embeddings()._forward_hooks  # the hook is gone after training
    teacher, _ = _train(assets, tmp_path / "teacher", strategy="full")
    student, _ = _train(assets, tmp_path / "student", teacher=str(teacher.best_checkpoint), distill_alpha=0.7)
    assert "accuracy" in student.metrics
    run_config = (tmp_path / "student" / "run_config.yaml").read_text()
    assert "distill_alpha: 0.7" in run_config and str(teacher.best_checkpoint) in run_config


@needs_minilm
def test_cli_and_yaml_options(assets, tmp_path):
    from peftkit.cli import add_train_arguments, main, parse_with_config, train_config_from_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "adversarial: pgd\nadv_steps: 3\nadv_epsilon: 0.5\nteacher: some/dir\ndistill_alpha: 0.3\n"
    )
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parse_with_config(
        parser, ["--config", str(cfg), "--adv-alpha", "0.2", "--distill-temperature", "4"]
    )
    config = train_config_from_args(args)
    assert (config.adversarial, config.adv_steps, config.adv_epsilon, config.adv_alpha) == (
        "pgd",
        3,
        0.5,
        0.2,
    )
    assert (config.teacher, config.distill_alpha, config.distill_temperature) == ("some/dir", 0.3, 4.0)
    d, out = assets["data"], tmp_path / "cli"
    argv = [
        "train",
        "--model",
        str(assets["model"]),
        "--task",
        "classification",
        "--train",
        str(d / "train.csv"),
        "--validation",
        str(d / "validation.csv"),
        "--strategy",
        "bitfit",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--adversarial",
        "freelb",
        "--adv-steps",
        "2",
        "--teacher",
        str(assets["model"]),
    ]
    assert main(argv) == 0
    saved = (out / "run_config.yaml").read_text()
    assert "adversarial: freelb" in saved and "teacher:" in saved
