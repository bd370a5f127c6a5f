"""Assets for the quick benchmark suite: a tiny random BERT (built from a config) with a word-level
tokenizer, and a tiny synthetic sentiment dataset, written into one folder.

    python tests/helpers_bench.py DIR      # then: PEFTKIT_BENCH_QUICK_DIR=DIR peftkit bench benchmarks/suites/quick.yaml
"""

from __future__ import annotations

import csv
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
QUICK_SUITE = ROOT / "benchmarks" / "suites" / "quick.yaml"
POSITIVE = ["good", "great", "lovely", "superb", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "ugly", "terrible"]
FILLER = ["the", "film", "was", "really", "plot", "and", "acting", "quite", "a", "story"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Short reviews whose label is the sentiment of their two strong words (learnable)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, rng.randint(2, 6)) + [rng.choice(POSITIVE if label else NEGATIVE) for _ in range(2)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["negative", "positive"][label]})
    return rows


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 random BERT for classification with a word-level WordPiece vocabulary."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER))) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = BertConfig(vocab_size=len(SPECIAL) + len(set(POSITIVE + NEGATIVE + FILLER)), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64, pad_token_id=0,
                        num_labels=2)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_sentiment(folder: Path, train: int = 64, test: int = 32) -> Path:
    """``train.csv`` and ``test.csv`` (columns text,label) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", train, 0), ("test", test, 1)):
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(sentiment_rows(n, seed))
    return folder


def write_quick_assets(root: Path) -> Path:
    """Everything quick.yaml reads: ``root/model`` and ``root/data/sentiment``."""
    write_tiny_bert(root / "model")
    write_sentiment(root / "data" / "sentiment")
    return root


def write_suite(path: Path, text: str) -> Path:
    """A suite file from YAML text (for the validation tests)."""
    path.write_text(text)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/helpers_bench.py DIR")
    print(write_quick_assets(Path(sys.argv[1])))
