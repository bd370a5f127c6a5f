"""Build a paraphrase task from banking77: pairs of customer messages, same intent or not.

    python benchmarks/make_banking77_pairs.py --out /tmp/banking77-pairs
    python benchmarks/make_banking77_pairs.py --source $PEFTKIT_DATA_DIR/banking77 --out DIR --seed 0 \\
        --train-pairs 10000 --test-pairs 2000

Writes ``train.csv`` and ``test.csv`` (columns ``text``, ``text_pair``, ``label`` = ``same`` /
``different``) into ``--out`` (a new or empty folder, outside the repository: the data is not
committed, this script is). Train pairs are drawn from banking77's train messages and test pairs
from its test messages, minus any test message whose text (casefolded, whitespace collapsed) is
also a train message, so no message is shared between the splits. Each split is balanced: half
the pairs share an intent (two different messages of one intent, the intent drawn uniformly),
half do not (two intents drawn uniformly). Seeded: the same arguments give the same files.
Train with ``peftkit train --task classification --text-pair-column text_pair``.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from collections import defaultdict
from pathlib import Path

COLUMNS = ("text", "text_pair", "label")


def read_messages(file: Path) -> dict[str, list[str]]:
    """intent -> its distinct messages (file order), from a banking77 csv (``text``, ``category``)."""
    by_intent: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    with file.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = " ".join(row["text"].split())
            if text and key(text) not in seen:
                seen.add(key(text))
                by_intent[row["category"]].append(text)
    return dict(by_intent)


def key(text: str) -> str:
    return " ".join(text.casefold().split())


def draw_pairs(by_intent: dict[str, list[str]], n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """``n`` distinct (text, text_pair, label) rows, half "same" and half "different", shuffled."""
    intents = sorted(by_intent)
    paired = [i for i in intents if len(by_intent[i]) >= 2]
    if len(intents) < 2 or not paired:
        raise ValueError("need at least two intents, one of them with two messages")
    rows: list[tuple[str, str, str]] = []
    seen: set[frozenset[str]] = set()
    for label, count in (("same", n // 2), ("different", n - n // 2)):
        made, tries = 0, 0
        while made < count:
            tries += 1
            if tries > 50 * count + 1000:
                raise ValueError(f"cannot draw {count} distinct {label!r} pairs from these messages; ask for fewer")
            if label == "same":
                a, b = rng.sample(by_intent[rng.choice(paired)], 2)
            else:
                first, second = rng.sample(intents, 2)
                a, b = rng.choice(by_intent[first]), rng.choice(by_intent[second])
            if frozenset((a, b)) in seen:
                continue
            seen.add(frozenset((a, b)))
            rows.append((a, b, label))
            made += 1
    rng.shuffle(rows)
    return rows


def make_pairs(source: Path, out: Path, seed: int = 0, train_pairs: int = 10000, test_pairs: int = 2000) -> dict[str, Path]:
    """Write ``out/train.csv`` and ``out/test.csv``; return their paths."""
    train = read_messages(source / "train.csv")
    train_keys = {key(t) for texts in train.values() for t in texts}
    test = {i: kept for i, texts in read_messages(source / "test.csv").items() if (kept := [t for t in texts if key(t) not in train_keys])}
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: give a new or empty folder.")
    rng = random.Random(seed)
    files = {}
    for split, messages, n in (("train", train, train_pairs), ("test", test, test_pairs)):
        files[split] = out / f"{split}.csv"
        with files[split].open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(draw_pairs(messages, n, rng))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(os.environ.get("PEFTKIT_DATA_DIR", "../shared/data")) / "banking77"
    parser.add_argument("--source", type=Path, default=default, help=f"banking77's folder (default: {default})")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for train.csv and test.csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-pairs", type=int, default=10000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    args = parser.parse_args()
    files = make_pairs(args.source, args.out, args.seed, args.train_pairs, args.test_pairs)
    print("\n".join(str(f) for f in files.values()))


if __name__ == "__main__":
    main()
